"""The one error a request can fail with, as OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Optional

# status -> OpenAI's error type for it
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class RequestError(Exception):
    """A request we refuse: its HTTP status, a message a person can act on, and the parameter at fault."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
