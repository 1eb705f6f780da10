"""``multipart/form-data`` streamed straight to disk, with a byte cap per file and a digest of the body.

Starlette's form parser spools file parts without a limit; this one refuses the part that crosses its
cap, or a body that outgrows the form (413), as soon as it does, refuses unknown or repeated fields and a
body without its closing boundary (422), and gives up on an upload that goes idle or takes too long (408).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from server.errors import ApiError
from server.files import disk_full

# A part header longer than this gets our 422 invalid_request; it stays under python-multipart's own
# 4 KiB + 128 line limit, past which the parser itself fails (malformed_multipart).
MAX_HEADER_BYTES = 4 * 1024
MAX_FIELD_BYTES = 4 * 1024
MAX_PARTS = 32
MAX_EPILOGUE_BYTES = 1024  # after the closing boundary: a CRLF is usual, anything else is refused


def insufficient_storage() -> ApiError:
    """The server's disk is full: not the client's fault, and no OS text goes out."""
    return ApiError(507, "insufficient_storage", "the server is out of storage space; try again later")


DISPLAY_NAME_CHARS = 255


def display_name(filename: str | None) -> str | None:
    """A client's file name made safe to show: NFC, the last path component, no control or format characters
    (bidi overrides such as U+202E included), at most 255 characters; None when nothing is left. Never used
    on disk (files are stored as ``reference.<suffix>`` / ``driving.<suffix>``)."""
    if not filename:
        return None
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return name.strip()[:DISPLAY_NAME_CHARS] or None


@dataclass
class UploadedFile:
    path: Path
    filename: str | None
    size: int = 0


@dataclass
class ParsedForm:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    digest: str = ""


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}  # raw: file names may be UTF-8
        self.name: str | None = None
        self.filename: str | None = None
        self.handle: BinaryIO | None = None
        self.value = bytearray()
        self.size = 0
        self.cap = 0


async def receive_form(
    request: Request,
    folder: Path,
    file_caps: dict[str, int],
    field_names: set[str],
    name_for: Callable[[str, str | None], str],
    *,
    idle_seconds: float,
    total_seconds: float,
) -> ParsedForm:
    """Stream the body into ``folder`` (files named by ``name_for(field, filename)``); fields as text.

    The upload fails with 408 ``upload_timeout`` when no byte comes for ``idle_seconds`` or the whole body
    takes longer than ``total_seconds``.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    boundary = params[b"boundary"]
    if not 1 <= len(boundary) <= 70:  # RFC 2046
        raise ApiError(422, "malformed_multipart", "the boundary must have 1 to 70 characters")
    declared = request.headers.get("content-length")
    limit = sum(file_caps.values()) + MAX_PARTS * (MAX_FIELD_BYTES + MAX_HEADER_BYTES)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the request declares {declared} bytes; the limit is {limit}")

    form = ParsedForm()
    part = _Part()
    header_field, header_value = bytearray(), bytearray()
    parts = 0
    ended = False
    failure: list[ApiError] = []
    digest = hashlib.sha256()

    def fail(error: ApiError) -> None:
        failure.append(error)
        raise error

    def on_part_begin() -> None:
        nonlocal part, parts
        parts += 1
        if parts > MAX_PARTS:
            fail(ApiError(422, "too_many_fields", f"at most {MAX_PARTS} form parts"))
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])
        if len(header_field) > MAX_HEADER_BYTES:
            fail(ApiError(422, "invalid_request", "form part header too long"))

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])
        if len(header_value) > MAX_HEADER_BYTES:
            fail(ApiError(422, "invalid_request", "form part header too long"))

    def on_header_end() -> None:
        part.headers[header_field.decode("latin-1").lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(part.headers.get("content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            fail(ApiError(422, "invalid_request", "a form part has no name"))
        part.name = name.decode("utf-8", "replace")
        if part.name in form.files or part.name in form.fields:
            fail(ApiError(422, "duplicate_field", f"'{part.name}' was sent twice"))
        if part.name in file_caps:
            raw = options.get(b"filename")
            part.filename = raw.decode("utf-8", "replace") if raw is not None else None
            path = folder / name_for(part.name, part.filename)
            part.cap = file_caps[part.name]
            part.handle = open(path, "wb")  # noqa: SIM115 - closed in on_part_end or on failure
            form.files[part.name] = UploadedFile(path, part.filename)
        elif part.name not in field_names:
            fail(ApiError(422, "unknown_field", f"unknown field '{part.name}'"))
        digest.update(b"\x00" + name + b"\x00")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        part.size += len(chunk)
        digest.update(chunk)
        if part.handle is not None:
            if part.size > part.cap:
                fail(ApiError(413, "too_large", f"'{part.name}' is over its {part.cap}-byte limit"))
            part.handle.write(chunk)
        else:
            if part.size > MAX_FIELD_BYTES:
                fail(ApiError(422, "invalid_option", f"field '{part.name}' is too long"))
            part.value.extend(chunk)

    def on_part_end() -> None:
        if part.handle is not None:
            part.handle.close()
            form.files[part.name].size = part.size
        elif part.name is not None:
            form.fields[part.name] = part.value.decode("utf-8", "replace")

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )
    deadline = asyncio.get_running_loop().time() + total_seconds
    received = 0
    closing = b"\r\n--" + boundary + b"--"
    tail = b"\r\n"  # the last bytes before the chunk: a closing delimiter may span two chunks
    epilogue = bytearray()  # what follows the closing delimiter
    try:
        while True:
            message = await _receive(request, idle_seconds, deadline)
            if message["type"] == "http.disconnect":
                raise ApiError(422, "malformed_multipart", "the client went away before the body ended")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:  # counted as it streams: a chunked body declares no length
                raise ApiError(413, "too_large", f"the body is over the {limit}-byte limit")
            if ended:
                epilogue += chunk
            else:
                parser.write(chunk)
                if ended:
                    joined = tail + chunk
                    epilogue += joined[joined.find(closing) + len(closing) :]
                tail = (tail + chunk[-len(closing) :])[-len(closing) :]
            if len(epilogue) > MAX_EPILOGUE_BYTES:
                raise ApiError(413, "too_large", "data follows the form's closing boundary")
            if not message.get("more_body", False):
                break
        if not ended:
            raise ApiError(422, "malformed_multipart", "the body ends before the form's closing boundary")
        if epilogue.strip():  # more parts after the end, say: refused, not silently dropped
            raise ApiError(422, "malformed_multipart", "data follows the form's closing boundary")
    except ApiError as exc:
        raise (failure[0] if failure else exc) from None
    except Exception as exc:
        if failure:
            raise failure[0] from None
        if disk_full(exc):
            raise insufficient_storage() from None
        raise ApiError(422, "malformed_multipart", "the body is not valid multipart/form-data") from None
    finally:
        if part.handle is not None and not part.handle.closed:
            with contextlib.suppress(OSError):  # a full disk fails the flush too; the folder goes anyway
                part.handle.close()
    form.digest = digest.hexdigest()
    return form


async def _receive(request: Request, idle_seconds: float, deadline: float) -> dict:
    """The next ASGI message of the body, or 408 when the client is idle or past the deadline."""
    wait = min(idle_seconds, deadline - asyncio.get_running_loop().time())
    try:
        async with asyncio.timeout(wait):
            return await request.receive()
    except TimeoutError:
        raise ApiError(
            408, "upload_timeout", "the upload was too slow; send the body without pauses"
        ) from None
