"""Errors a user can cause carry a stable machine-readable ``code``.

The CLI maps them to exit code 2, the API to a 4xx JSON body, a job to ``failed`` with ``error.code``.
Anything else that escapes is an internal error (exit code 1, HTTP 500).
"""

from __future__ import annotations


class AnimateError(Exception):
    """A problem with the user's input or setup, described by a stable ``code`` and a human message."""

    code: str = "invalid_input"

    def __init__(self, code: str | None = None, message: str = "") -> None:
        self.code = code or type(self).code
        self.message = message or self.code.replace("_", " ")
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
