"""Holding the ``/api/v1`` API to its document: a middleware that records every JSON answer with the
route that produced it, and a validator that checks each one against the schema ``/openapi.json``
documents for that path, method and status (JSON Schema 2020-12, the dialect of OpenAPI 3.1)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def template(path: str) -> str:
    """``/api/v1/budgets/{budget_id}`` and ``/api/v1/budgets/{budgetId}`` -> ``/api/v1/budgets/{}``."""
    return re.sub(r"\{[^}]+\}", "{}", path)


@dataclass(frozen=True, slots=True)
class Answer:
    route: str  # the route template
    method: str
    status: int
    body: Any


@dataclass
class Recorder:
    """Records the JSON answer of every ``/api/v1`` route (errors included: the error middleware
    is outside this one, so handler exceptions pass through unrecorded and are checked apart)."""

    answers: list[Answer] = field(default_factory=list)

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        if (route.startswith("/api/v1/") and isinstance(response, web.Response)
                and response.content_type == "application/json" and response.body is not None):
            raw = response.body if isinstance(response.body, bytes) else response.text.encode()
            self.answers.append(Answer(route, request.method, response.status, orjson.loads(raw)))
        return response


def response_schema(document: dict[str, Any], route: str, method: str, status: int) -> dict[str, Any] | None:
    for path, operations in document["paths"].items():
        if template(path) == template(route) and method.lower() in operations:
            found = operations[method.lower()]["responses"].get(str(status))
            if found is None:
                return None
            return dict(found["content"]["application/json"]["schema"])
    return None


def problems(document: dict[str, Any], answers: list[Answer]) -> list[str]:
    """Every answer that has no documented schema or does not validate against it."""
    found = []
    for answer in answers:
        schema = response_schema(document, answer.route, answer.method, answer.status)
        if schema is None:
            found.append(f"{answer.method} {answer.route} {answer.status}: not documented")
            continue
        validator = Draft202012Validator({**schema, "components": document["components"]})
        for error in validator.iter_errors(answer.body):
            where = "/".join(str(p) for p in error.absolute_path)
            found.append(f"{answer.method} {answer.route} {answer.status} at {where or '(root)'}: {error.message}")
    return found


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(template(p), m.upper()) for p, ops in document["paths"].items() for m in ops}


def covered(answers: list[Answer]) -> set[tuple[str, str]]:
    return {(template(a.route), a.method) for a in answers}


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers 200."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()
        return str(self.server.make_url("/hooks"))

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        return web.Response(text="ok")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


