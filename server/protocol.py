"""uvicorn's httptools protocol with a cap on request-header bytes and a deadline to send them.

httptools itself accepts headers of any size (and joins a long value's pieces by copying them, which costs
the event loop, and so every client, more with each piece); a server that reads them without a cap or a
clock can be held by one slow or endless request. ``animate serve`` runs this class instead.
"""

from __future__ import annotations

import asyncio
import json

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from animate.settings import ServerSettings
from server.errors import error_body


class GuardedHttpProtocol(HttpToolsProtocol):
    """Request line plus headers above ``max_header_bytes``: 431; not finished in ``header_timeout``: 408.

    Errors the HTTP parser raises answer in the API's JSON error shape too (400 ``invalid_http``), and a
    transfer coding other than ``chunked`` is refused (400) rather than guessed at.
    """

    max_header_bytes = 64 * 1024
    header_timeout = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_room: int | None = None  # None while a body (or nothing) is being read
        self._header_timer: asyncio.TimerHandle | None = None
        self._parser_refusal: tuple[int, str, str] | None = None  # why a callback stopped the parser

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_room = self.max_header_bytes
        self._arm_header_timer()  # also a client that connects and sends nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data:
            if self._header_room is None:
                super().data_received(data)
                return
            # Feed no more than the headers may still take; if they are not complete by then, refuse.
            head, data = data[: self._header_room], data[self._header_room :]
            self._header_room -= len(head)
            super().data_received(head)
            if self.transport.is_closing():
                return
            if self._header_room == 0:
                self._refuse(431, "headers_too_large", f"request headers over {self.max_header_bytes} bytes")
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._header_room = None
        self._cancel_header_timer()
        coding = dict(self.headers).get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            self._parser_refusal = (400, "unsupported_transfer_encoding", "only chunked transfer coding")
            raise httptools.HttpParserError("transfer coding")  # uvicorn answers via send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._header_room = self.max_header_bytes

    def send_400_response(self, msg: str) -> None:
        self._refuse(*(self._parser_refusal or (400, "invalid_http", "the request is not valid HTTP/1.1")))

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(
                408, "request_timeout", f"request headers not received within {self.header_timeout:g} s"
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the JSON error shape and close, unless a response is under way (then only close)."""
        self._cancel_header_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.response_started:
            cycle.disconnected = True  # the app's own answer to this request now goes nowhere
            cycle.message_event.set()
        if cycle is None or cycle.response_complete or cycle.disconnected:
            body = json.dumps(error_body(code, message), separators=(",", ":")).encode()
            head = [STATUS_LINE[status]]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()


def http_protocol(settings: ServerSettings) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's ``http=``, with the server settings' limits."""
    limits = {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout": settings.header_timeout_seconds,
    }
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), limits)
