"""Resolving a concrete model name for an endpoint (the router itself is ``selection_router``)."""

from __future__ import annotations

from costproxy.errors import InvalidRequest, UnknownModel
from costproxy.registry import ENDPOINT_KIND, ModelSpec, Registry


def unknown_model(name: str) -> UnknownModel:
    """The 404 for a model name this proxy does not serve (OpenAI's wording)."""
    return UnknownModel(f"The model '{name}' does not exist or is not served by this proxy; "
                        "GET /v1/models lists the models you can use", param="model")


def resolve_concrete(registry: Registry, name: str, endpoint: str) -> ModelSpec:
    model = registry.resolve(name)
    if model is None:
        raise unknown_model(name)
    kind = ENDPOINT_KIND[endpoint]
    if model.kind != kind and not (kind == "completion" and "completions" in model.capabilities):
        raise InvalidRequest(f"model '{model.id}' is a {model.kind} model and cannot serve /{endpoint}",
                             param="model")
    return model
