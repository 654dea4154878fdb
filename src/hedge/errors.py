"""The one exception tree. Each class knows its HTTP status and its OpenAI error type.

Anything raised inside the gateway that a client should see is a `HedgeError`; the server renders
every one of them with the same handler as `{"error": {"message", "type", "code", "param"}}`.
Anything else is a bug: the server logs it and answers a generic 500 without the traceback.
"""

from __future__ import annotations


class HedgeError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        # Fields added to the error object beside OpenAI's four (clients ignore what they
        # do not know), e.g. the list of policy refusals.
        self.details: dict[str, object] = {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
                **self.details,
            }
        }


class InvalidRequest(HedgeError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unsupported(InvalidRequest):
    """The request asks for something no deployment of the route can do (n>1, tools...)."""

    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ContentPolicy(InvalidRequest):
    code = "content_policy_violation"


class AuthenticationFailed(HedgeError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(HedgeError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class PolicyRefused(PermissionDenied):
    """Every deployment of the route was refused by policy; nothing was sent upstream."""

    code = "policy_refused"


class NotFound(HedgeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(HedgeError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(HedgeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(HedgeError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """A key's spend budget for its period cannot cover this request; waiting (for the next
    period) or a bigger budget helps, retrying now does not."""

    type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamError(HedgeError):
    """One upstream call failed. `retryable` says whether another try (here or elsewhere) may
    succeed; the gateway turns a run of these into `AllAttemptsFailed`."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class Overloaded(UpstreamError):
    """A local deployment's queue is full: try elsewhere, or later."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retryable=True, retry_after_s=retry_after_s)


class AllAttemptsFailed(HedgeError):
    status = 502
    type = "upstream_error"
    code = "all_deployments_failed"


class NotReady(HedgeError):
    status = 503
    type = "server_error"
    code = "not_ready"


class ConfigError(Exception):
    """hedge.yaml is wrong. Raised at start-up only; the message names the file and key path."""
