"""The router: which model serves a request, and what to fall back to.

A concrete model (or an alias) is served as asked.  Virtual models (``auto``, ``auto:economy``,
``auto:balanced``, ``auto:quality``) and tier names go through the selection engine.
"""

from __future__ import annotations

from costproxy.errors import InvalidRequest, UnknownModel
from costproxy.pipeline import ENDPOINT_KIND, Route, RouteInput
from costproxy.registry import ModelSpec, Registry


class StaticRouter:
    """Serves exactly the requested model; used when no selection engine is configured."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def route(self, request: RouteInput) -> Route:
        model = resolve_concrete(self.registry, request.requested, request.ctx.endpoint)
        return Route(chain=(model,), baseline=model)

    def record_result(self, model: ModelSpec, ok: bool) -> None:
        return None


def resolve_concrete(registry: Registry, name: str, endpoint: str) -> ModelSpec:
    model = registry.resolve(name)
    if model is None:
        raise UnknownModel(f"The model '{name}' does not exist or is not served by this proxy; "
                           "GET /v1/models lists the models you can use", param="model")
    kind = ENDPOINT_KIND[endpoint]
    if model.kind != kind and not (kind == "completion" and "completions" in model.capabilities):
        raise InvalidRequest(f"model '{model.id}' is a {model.kind} model and cannot serve /{endpoint}",
                             param="model")
    return model
