"""Every error costproxy raises on purpose, grouped by fault domain.

    ProxyError                      base: HTTP status + closed ``code`` + OpenAI ``type``
    ├── CallerError                 the request itself is wrong (4xx, ``invalid_request_error``)
    │   ├── InvalidJSON             body is not JSON / not an object            400 invalid_json
    │   ├── InvalidRequest          a field has a bad value or is missing       400 invalid_request
    │   ├── BodyTooLarge            body over ``server.max_body_bytes``         413 body_too_large
    │   ├── RequestTimeout          body not received within its time limit    408 request_timeout
    │   ├── UnknownModel            model not in the registry                   404 model_not_found
    │   ├── NotFound                route or resource does not exist            404 not_found
    │   ├── MethodNotAllowed        wrong HTTP method                           405 method_not_allowed
    │   ├── ContextTooLong          prompt + output cannot fit the model        400 context_length_exceeded
    │   ├── Unauthenticated         missing, unknown or revoked key             401 invalid_api_key
    │   ├── Forbidden               key lacks the scope for this call           403 forbidden
    │   └── IdempotencyKeyReused    a usage record's key names a different one  409 idempotency_key_reused
    ├── PolicyError                 costproxy's rules or budgets refuse it
    │   ├── BudgetExceeded          a hard budget cannot fit the worst case     429 budget_exceeded
    │   ├── RateLimited             a rate limit has no room now (retry-after)  429 rate_limited
    │   ├── ExceedsRateLimit        the request alone is above a rate limit     429 exceeds_rate_limit
    │   ├── RuleRejected            a steering rule rejected the request        403 rule_rejected
    │   ├── ModelNotAllowed         a budget or rule forbids the named model    403 model_not_allowed
    │   ├── UnpricedTool            a provider-side tool without a fee, under a hard budget  400 unpriced_tool
    │   └── NoEligibleModel         no model meets capabilities/quality/budget  422 no_eligible_model
    ├── ProviderError               the upstream failed
    │   ├── UpstreamTimeout         no answer in time                           504 upstream_timeout
    │   ├── UpstreamUnavailable     connection refused / dropped                502 upstream_unavailable
    │   ├── UpstreamRateLimited     upstream 429                                429 upstream_rate_limited
    │   ├── UpstreamBadResponse     unparseable upstream body                   502 upstream_bad_response
    │   └── UpstreamHTTPError       other upstream 4xx/5xx, relayed faithfully  <status> upstream_error
    └── InternalError               a bug or a broken dependency of ours        500 internal_error
        ├── StoreUnavailable        ledger/budget store unreachable             503 store_unavailable
        ├── ProviderNotConfigured   the model's provider has no credentials     503 provider_not_configured
        ├── ReservationLost         the request's budget lease could not be kept 503 reservation_lost
        └── ServerShuttingDown      the drain deadline ended the request         503 server_shutting_down

``ConfigError`` is separate: it is raised while loading configuration, never while serving, and
names the file, the dotted path and the bad value.
"""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"
    retryable: bool = False
    close_connection: bool = False  # the request body was not read to its end
    no_retry: bool = False  # SDKs are told not to retry it (``x-should-retry: false``): waiting cannot help

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        if self.no_retry:
            self.headers.setdefault("x-should-retry", "false")
        self.details = dict(details or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape; ``details`` are costproxy extras next to the standard keys."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.details)
        return {"error": error}


class CallerError(ProxyError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidJSON(CallerError):
    code = "invalid_json"


class InvalidRequest(CallerError):
    code = "invalid_request"


class MalformedRequest(CallerError):
    """The HTTP parser rejected the request line or headers: raised by no handler, answered by the
    connection handler (``costproxy.http.server``) before the request reaches the application."""

    code = "malformed_request"
    close_connection = True


class BodyTooLarge(CallerError):
    status = 413
    code = "body_too_large"
    close_connection = True


class RequestTimeout(CallerError):
    status = 408
    code = "request_timeout"
    close_connection = True


class UnknownModel(CallerError):
    status = 404
    code = "model_not_found"


class NotFound(CallerError):
    status = 404
    code = "not_found"


class MethodNotAllowed(CallerError):
    status = 405
    code = "method_not_allowed"


class ContextTooLong(CallerError):
    code = "context_length_exceeded"


class Unauthenticated(CallerError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class Forbidden(CallerError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class IdempotencyKeyReused(CallerError):
    """An idempotency key already claimed by a different usage record (another amount, source or
    metadata): nothing is charged; sending it again cannot help, so SDKs (which retry a 409) must not."""

    status = 409
    code = "idempotency_key_reused"
    no_retry = True


class PolicyError(ProxyError):
    status = 403
    code = "policy_violation"
    type = "invalid_request_error"


class BudgetExceeded(PolicyError):
    """A hard budget cannot fit the request's worst case; SDKs must not retry it."""

    status = 429
    code = "budget_exceeded"
    type = "insufficient_quota"
    no_retry = True


class RateLimited(PolicyError):
    """A requests- or tokens-per-minute limit has no room for the request now; ``retry-after``
    says when it will.  SDKs may retry it (no ``x-should-retry: false``)."""

    status = 429
    code = "rate_limited"
    type = "rate_limit_error"


class ExceedsRateLimit(PolicyError):
    """The request alone needs more tokens than a limit's whole capacity: waiting cannot help."""

    status = 429
    code = "exceeds_rate_limit"
    type = "rate_limit_error"
    no_retry = True


class RuleRejected(PolicyError):
    status = 403
    code = "rule_rejected"


class ModelNotAllowed(PolicyError):
    """The caller named a model that policy forbids, and no policy allows switching it."""

    status = 403
    code = "model_not_allowed"


class UnpricedTool(PolicyError):
    """A tool that runs on the provider's side has no fee in models.yaml's ``tool_fees``: its cost
    cannot be bounded, so a caller with a hard budget is refused it (``param``: the tool)."""

    status = 400
    code = "unpriced_tool"
    type = "invalid_request_error"
    no_retry = True


class NoEligibleModel(PolicyError):
    status = 422
    code = "no_eligible_model"


class ProviderError(ProxyError):
    status = 502
    code = "upstream_error"
    type = "api_error"
    retryable = True
    billed = False  # the provider accepted the call (answered 2xx) before it failed: it may have billed it

    def after_acceptance(self) -> ProviderError:
        """Mark a failure that came after the provider accepted the call: it may have billed it, so
        it is charged, not released, and never retried on another model (that could bill twice)."""
        self.billed, self.retryable = True, False
        return self


class UpstreamTimeout(ProviderError):
    status = 504
    code = "upstream_timeout"


class UpstreamUnavailable(ProviderError):
    status = 502
    code = "upstream_unavailable"


class UpstreamRateLimited(ProviderError):
    status = 429
    code = "upstream_rate_limited"
    type = "rate_limit_error"


class UpstreamBadResponse(ProviderError):
    status = 502
    code = "upstream_bad_response"


class UpstreamHTTPError(ProviderError):
    """Any other upstream 4xx/5xx: status, message and type are relayed as the provider sent them."""

    code = "upstream_error"

    def __init__(self, message: str, *, status: int, upstream_body: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.retryable = status >= 500
        self.upstream_body = upstream_body
        if upstream_body is not None:
            error = upstream_body.get("error")
            if isinstance(error, dict):
                self.type = str(error.get("type") or self.type)
                if error.get("param") is not None:
                    self.param = str(error["param"])
                if error.get("code") is not None:
                    self.details["upstream_code"] = error["code"]


class InternalError(ProxyError):
    status = 500
    code = "internal_error"
    type = "server_error"


class StoreUnavailable(InternalError):
    status = 503
    code = "store_unavailable"


class ProviderNotConfigured(InternalError):
    """The model's provider is not usable in this deployment (its API key is not set); nothing
    is ever forwarded without the provider's credentials."""

    status = 503
    code = "provider_not_configured"
    no_retry = True  # a deployment's configuration: an SDK retrying it only waits


class ReservationLost(InternalError):
    """A running request's budget reservation could not be renewed before it lapsed (the budget
    store was unreachable too long, or the lease was reclaimed): the request is ended so that no
    spend happens without money held for it."""

    status = 503
    code = "reservation_lost"


class ServerShuttingDown(InternalError):
    """The server was draining (SIGTERM) and ``server.drain_timeout_s`` passed while the request
    still ran: it was ended.  A stream gets this as its last event; the ledger records what was
    generated until then.  Another replica (or this one, restarted) can take the retry."""

    status = 503
    code = "server_shutting_down"


class ConfigError(ValueError):
    """Invalid configuration: names the file, the dotted path and the bad value."""

    def __init__(self, file: str, path: str, message: str, value: object = None) -> None:
        self.file = file
        self.path = path
        self.value = value
        where = f"{file}: {path}" if path else file
        shown = "" if value is None else f" (got {_clip(repr(value))})"
        super().__init__(f"{where}: {message}{shown}")


def _clip(text: str, limit: int = 120) -> str:
    """A bad value as shown in an error: whole when short, else its start (a typo'd section is big)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
