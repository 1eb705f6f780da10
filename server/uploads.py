"""``multipart/form-data`` streamed straight to disk, with a byte cap per file and a digest of the body.

Starlette's form parser spools file parts without a limit; this one refuses the part that crosses its
cap (413) as soon as it does, and refuses unknown or repeated fields (422).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from server.errors import ApiError

MAX_HEADER_BYTES = 8 * 1024
MAX_FIELD_BYTES = 4 * 1024
MAX_PARTS = 32


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
        self.headers: dict[str, str] = {}
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
) -> ParsedForm:
    """Stream the body into ``folder`` (files named by ``name_for(field, filename)``); fields as text."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    declared = request.headers.get("content-length")
    limit = sum(file_caps.values()) + MAX_PARTS * (MAX_FIELD_BYTES + MAX_HEADER_BYTES)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the request declares {declared} bytes; the limit is {limit}")

    form = ParsedForm()
    part = _Part()
    header_field, header_value = bytearray(), bytearray()
    parts = 0
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
        part.headers[header_field.decode("latin-1").lower()] = header_value.decode("utf-8", "replace")
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(part.headers.get("content-disposition", ""))
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

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise failure[0] from None
    except Exception as exc:
        if failure:
            raise failure[0] from None
        raise ApiError(422, "invalid_request", f"malformed multipart body: {exc}") from None
    finally:
        if part.handle is not None and not part.handle.closed:
            part.handle.close()
    form.digest = digest.hexdigest()
    return form
