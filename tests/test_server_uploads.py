"""The streaming multipart parser in-process: bodies built by hand, fed in chosen chunks through ASGI
``receive``; files on disk, fields, digest and every refusal with its status and code.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from starlette.requests import Request

from server import uploads
from server.errors import ApiError
from server.uploads import (
    MAX_EPILOGUE_BYTES,
    MAX_FIELD_BYTES,
    MAX_HEADER_BYTES,
    MAX_PARTS,
    display_name,
    receive_form,
)

BOUNDARY = "XyZ123boundary"
CAPS = {"reference": 100, "driving": 200}
FIELDS = {"width", "height"}


def part(name: str, data: bytes, filename: str | None = None, headers: bytes = b"") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        + headers
        + b"\r\n"
        + data
        + b"\r\n"
    )


def body(*parts: bytes, epilogue: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--".encode() + epilogue


def parse(
    tmp_path: Path,
    data: bytes,
    chunk: int = 7,
    content_type: str | None = None,
    declared: int | None = None,
    messages: list[dict] | None = None,
    idle: float = 5.0,
    total: float = 5.0,
    caps: dict[str, int] = CAPS,
):
    headers = [(b"content-type", (content_type or f"multipart/form-data; boundary={BOUNDARY}").encode())]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    if messages is None:
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
            for i, p in enumerate(pieces)
        ]
    queue = list(messages)

    async def receive() -> dict:
        item = queue.pop(0)
        if callable(item):
            return await item()
        return item

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)
    folder = tmp_path / "up"
    folder.mkdir(exist_ok=True)

    async def run():
        return await receive_form(
            request,
            folder,
            caps,
            FIELDS,
            lambda field, filename: f"{field}.bin",
            idle_seconds=idle,
            total_seconds=total,
        )

    try:
        return asyncio.run(run())
    except ApiError as exc:
        return exc


def digest_of(*named: tuple[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in named:
        h.update(b"\x00" + name + b"\x00" + data)
    return h.hexdigest()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_files_and_fields_land_whole_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    reference = bytes(range(100))  # exactly at its cap; CRLF and dashes inside
    driving = b"--" + BOUNDARY.encode() + b"x\r\n" * 20
    data = body(
        part("reference", reference, "me.jpg"),
        part("width", b"288"),
        part("driving", driving, "clip.mp4", b"Content-Type: video/mp4\r\n"),
    )
    form = parse(tmp_path, data, chunk=chunk)
    assert not isinstance(form, ApiError), form
    assert form.fields == {"width": "288"}
    assert (tmp_path / "up" / "reference.bin").read_bytes() == reference
    assert (tmp_path / "up" / "driving.bin").read_bytes() == driving
    assert (form.files["reference"].filename, form.files["reference"].size) == ("me.jpg", 100)
    assert (form.files["driving"].filename, form.files["driving"].size) == ("clip.mp4", len(driving))
    assert form.files["reference"].path == tmp_path / "up" / "reference.bin"
    assert form.digest == digest_of((b"reference", reference), (b"width", b"288"), (b"driving", driving))


def test_a_file_part_without_filename_and_utf8_values(tmp_path: Path) -> None:
    name = "été.jpg"
    data = body(part("reference", b"abc"), part("height", b"512"), part("driving", b"d", name))
    form = parse(tmp_path, data)
    assert form.files["reference"].filename is None
    assert form.files["driving"].filename == name
    assert form.fields == {"height": "512"}


def test_the_digest_depends_on_names_and_order(tmp_path: Path) -> None:
    one = parse(tmp_path, body(part("width", b"1"), part("height", b"2")))
    two = parse(tmp_path, body(part("height", b"1"), part("width", b"2")))
    assert one.digest != two.digest
    assert one.digest == digest_of((b"width", b"1"), (b"height", b"2"))


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("application/json", 415, "unsupported_media_type"),
        ("multipart/form-data", 415, "unsupported_media_type"),
        ("multipart/mixed; boundary=abc", 415, "unsupported_media_type"),
        ("multipart/form-data; boundary=" + "b" * 71, 422, "malformed_multipart"),
        ('multipart/form-data; boundary=""', 422, "malformed_multipart"),
    ],
)
def test_content_type_and_boundary_are_checked(
    tmp_path: Path, content_type: str, status: int, code: str
) -> None:
    error = parse(tmp_path, body(part("width", b"1")), content_type=content_type)
    assert (error.status, error.code) == (status, code)
    messages = {415: "send multipart/form-data", 422: "the boundary must have 1 to 70 characters"}
    assert error.message == messages[status]


def test_a_boundary_of_71_characters_is_refused_even_when_the_body_uses_it(tmp_path: Path) -> None:
    boundary = "b" * 71
    data = f'--{boundary}\r\nContent-Disposition: form-data; name="width"\r\n\r\n12\r\n--{boundary}--\r\n'
    error = parse(tmp_path, data.encode(), content_type=f"multipart/form-data; boundary={boundary}")
    assert (error.status, error.code) == (422, "malformed_multipart")
    assert error.message == "the boundary must have 1 to 70 characters"


def test_boundaries_of_1_and_70_characters_are_fine(tmp_path: Path) -> None:
    for boundary in ("q", "b" * 70):
        data = f'--{boundary}\r\nContent-Disposition: form-data; name="width"\r\n\r\n12\r\n--{boundary}--\r\n'
        form = parse(tmp_path, data.encode(), content_type=f"multipart/form-data; boundary={boundary}")
        assert form.fields == {"width": "12"}, form


def test_the_declared_length_is_refused_over_the_forms_limit(tmp_path: Path) -> None:
    limit = 300 + MAX_PARTS * (MAX_FIELD_BYTES + MAX_HEADER_BYTES)
    data = body(part("width", b"1"))
    error = parse(tmp_path, data, declared=limit + 1)
    assert (error.status, error.code) == (413, "too_large")
    assert str(limit) in error.message and str(limit + 1) in error.message
    form = parse(tmp_path, data, declared=limit)  # at the limit: read (and the body is small)
    assert form.fields == {"width": "1"}


def test_the_streamed_length_is_refused_over_the_limit(tmp_path: Path) -> None:
    caps = {"reference": 10, "driving": 10}
    limit = 20 + MAX_PARTS * (MAX_FIELD_BYTES + MAX_HEADER_BYTES)
    filler = b"\r\n" * ((limit - 60) // 2)  # a long preamble: not in any part, still body bytes
    over = filler + body(part("width", b"1"))
    assert len(over) > limit
    error = parse(tmp_path, over, chunk=4096, caps=caps)
    assert (error.status, error.code) == (413, "too_large")
    assert error.message == f"the body is over the {limit}-byte limit"
    exact = filler[: limit - len(body(part("width", b"1")))] + body(part("width", b"1"))
    assert len(exact) == limit
    assert parse(tmp_path, exact, chunk=4096, caps=caps).fields == {"width": "1"}


def test_a_file_one_byte_over_its_cap_is_413_and_closed(tmp_path: Path) -> None:
    error = parse(tmp_path, body(part("reference", b"r" * 101, "a.jpg")))
    assert (error.status, error.code) == (413, "too_large")
    assert error.message == "'reference' is over its 100-byte limit"
    assert len((tmp_path / "up" / "reference.bin").read_bytes()) <= 100


def test_a_field_over_4_kib_is_refused(tmp_path: Path) -> None:
    assert (
        parse(tmp_path, body(part("width", b"9" * MAX_FIELD_BYTES))).fields["width"] == "9" * MAX_FIELD_BYTES
    )
    error = parse(tmp_path, body(part("width", b"9" * (MAX_FIELD_BYTES + 1))), chunk=512)
    assert (error.status, error.code, error.message) == (422, "invalid_option", "field 'width' is too long")


def test_unknown_and_repeated_fields_are_refused(tmp_path: Path) -> None:
    error = parse(tmp_path, body(part("strength", b"3")))
    assert (error.status, error.code, error.message) == (422, "unknown_field", "unknown field 'strength'")
    error = parse(tmp_path, body(part("width", b"1"), part("width", b"2")))
    assert (error.status, error.code, error.message) == (422, "duplicate_field", "'width' was sent twice")
    error = parse(tmp_path, body(part("reference", b"1", "a"), part("reference", b"2", "b")))
    assert (error.status, error.code) == (422, "duplicate_field")


def test_at_most_32_parts(tmp_path: Path) -> None:
    caps = {f"f{i}": 10 for i in range(MAX_PARTS + 1)}
    ok = parse(tmp_path, body(*(part(f"f{i}", b"x", "n") for i in range(MAX_PARTS))), caps=caps)
    assert len(ok.files) == MAX_PARTS
    error = parse(tmp_path, body(*(part(f"f{i}", b"x", "n") for i in range(MAX_PARTS + 1))), caps=caps)
    assert (error.status, error.code, error.message) == (422, "too_many_fields", "at most 32 form parts")


def test_part_headers_over_4_kib_are_refused(tmp_path: Path) -> None:
    fine = parse(tmp_path, body(part("width", b"1", headers=b"X-Pad: " + b"p" * MAX_HEADER_BYTES + b"\r\n")))
    assert fine.fields == {"width": "1"}
    long_value = b"X-Pad: " + b"p" * (MAX_HEADER_BYTES + 1) + b"\r\n"
    error = parse(tmp_path, body(part("width", b"1", headers=long_value)), chunk=1000)
    assert (error.status, error.code, error.message) == (422, "invalid_request", "form part header too long")
    long_name = b"X-" + b"n" * (MAX_HEADER_BYTES + 1) + b": v\r\n"
    error = parse(tmp_path, body(part("width", b"1", headers=long_name)), chunk=1000)
    assert (error.status, error.code, error.message) == (422, "invalid_request", "form part header too long")


def test_a_part_without_a_form_data_name_is_refused(tmp_path: Path) -> None:
    nameless = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode()
    error = parse(tmp_path, body(nameless))
    assert (error.status, error.code, error.message) == (422, "invalid_request", "a form part has no name")
    attachment = f'--{BOUNDARY}\r\nContent-Disposition: attachment; name="width"\r\n\r\nx\r\n'.encode()
    assert parse(tmp_path, body(attachment)).code == "invalid_request"
    no_disposition = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n".encode()
    assert parse(tmp_path, body(no_disposition)).code == "invalid_request"


def test_a_body_cut_before_its_closing_boundary_is_refused(tmp_path: Path) -> None:
    data = body(part("width", b"1"))
    cut = data[: data.rfind(b"--" + BOUNDARY.encode() + b"--")]
    error = parse(tmp_path, cut)
    assert (error.status, error.code) == (422, "malformed_multipart")
    assert error.message == "the body ends before the form's closing boundary"


def test_garbage_is_malformed_multipart(tmp_path: Path) -> None:
    error = parse(tmp_path, b"this is not multipart at all\r\n" * 3)
    assert (error.status, error.code, error.message) == (
        422,
        "malformed_multipart",
        "the body is not valid multipart/form-data",
    )


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_data_after_the_closing_boundary_is_refused(tmp_path: Path, chunk: int) -> None:
    error = parse(tmp_path, body(part("width", b"1"), epilogue=b"\r\nsmuggled"), chunk=chunk)
    assert (error.status, error.code) == (422, "malformed_multipart")
    assert error.message == "data follows the form's closing boundary"
    # white space after it is fine, up to 1 KiB
    assert parse(tmp_path, body(part("width", b"1"), epilogue=b"\r\n" + b" " * 1000), chunk=chunk).fields
    error = parse(tmp_path, body(part("width", b"1"), epilogue=b" " * (MAX_EPILOGUE_BYTES + 1)), chunk=chunk)
    assert (error.status, error.code) == (413, "too_large")
    assert error.message == "data follows the form's closing boundary"
    # the closing delimiter again after the end is data too
    closing = f"\r\n--{BOUNDARY}--".encode()
    error = parse(tmp_path, body(part("width", b"1"), epilogue=closing), chunk=chunk)
    assert (error.status, error.code) == (422, "malformed_multipart")
    assert parse(tmp_path, body(part("width", b"1"), epilogue=b" " * MAX_EPILOGUE_BYTES), chunk=chunk).fields


def test_a_client_that_goes_away_is_refused(tmp_path: Path) -> None:
    data = body(part("width", b"1"))
    messages = [{"type": "http.request", "body": data[:10], "more_body": True}, {"type": "http.disconnect"}]
    error = parse(tmp_path, data, messages=messages)
    assert (error.status, error.code) == (422, "malformed_multipart")
    assert error.message == "the client went away before the body ended"


def test_an_idle_or_slow_upload_is_408(tmp_path: Path) -> None:
    data = body(part("width", b"1"))

    async def stall() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.request", "body": data[10:], "more_body": False}

    first = {"type": "http.request", "body": data[:10], "more_body": True}
    error = parse(tmp_path, data, messages=[first, stall], idle=0.05, total=5)
    assert (error.status, error.code) == (408, "upload_timeout")
    assert error.message == "the upload was too slow; send the body without pauses"
    error = parse(tmp_path, data, messages=[first, stall], idle=30, total=0.05)  # the whole-body deadline
    assert (error.status, error.code) == (408, "upload_timeout")

    async def late() -> dict:
        await asyncio.sleep(0.02)
        return {"type": "http.request", "body": data[10:], "more_body": False}

    assert parse(tmp_path, data, messages=[first, late], idle=1, total=1).fields == {"width": "1"}


def test_a_full_disk_is_507_and_other_write_errors_are_malformed(tmp_path: Path, monkeypatch) -> None:
    import errno

    class FullFile:
        closed = False

        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.closed = True
            raise OSError(errno.ENOSPC, "No space left on device")  # the flush fails too

    opened: list[FullFile] = []

    def fake_open(path, mode):
        opened.append(FullFile())
        return opened[-1]

    monkeypatch.setattr(uploads, "open", fake_open, raising=False)
    error = parse(tmp_path, body(part("reference", b"abc", "a.jpg")))
    assert (error.status, error.code) == (507, "insufficient_storage")
    assert error.message == "the server is out of storage space; try again later"
    assert opened[0].closed  # the handle is closed on failure

    class BrokenFile(FullFile):
        def write(self, _data: bytes) -> int:
            raise OSError(errno.EIO, "I/O error")

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(uploads, "open", lambda path, mode: BrokenFile(), raising=False)
    error = parse(tmp_path, body(part("reference", b"abc", "a.jpg")))
    assert (error.status, error.code) == (422, "malformed_multipart")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (None, None),
        ("", None),
        ("photo.jpg", "photo.jpg"),
        ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("a/b/", None),
        ("evil\u202egpj.exe", "evilgpj.exe"),  # bidi override dropped
        ("tab\there\x00.png", "tabhere.png"),
        ("  spaced.png  ", "spaced.png"),
        ("e\u0301te\u0301.jpg", "\u00e9t\u00e9.jpg"),  # NFC
        ("x" * 300, "x" * 255),
        ("\u200b", None),  # only a format character
    ],
)
def test_display_name(raw: str | None, shown: str | None) -> None:
    assert display_name(raw) == shown


def test_messages_without_body_or_more_body_keys_are_the_asgi_defaults(tmp_path: Path) -> None:
    data = body(part("width", b"7"))
    messages = [{"type": "http.request", "body": data, "more_body": True}, {"type": "http.request"}]
    assert parse(tmp_path, data, messages=messages).fields == {"width": "7"}
    assert parse(tmp_path, data, messages=[{"type": "http.request", "body": data}]).fields == {"width": "7"}


def test_a_form_without_parts_in_one_chunk(tmp_path: Path) -> None:
    form = parse(tmp_path, f"--{BOUNDARY}--\r\n".encode(), chunk=4096)
    assert (form.files, form.fields) == ({}, {})


def test_invalid_utf8_in_names_filenames_and_values_is_replaced(tmp_path: Path) -> None:
    seen: list = []
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    raw_file = (
        f"--{BOUNDARY}\r\n".encode()
        + b'Content-Disposition: form-data; name="reference"; filename="a\xffb.jpg"\r\n\r\nDATA\r\n'
    )
    data = body(raw_file, part("width", b"1\xff"))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    messages = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0)

    def name_for(field: str, filename: str | None) -> str:
        seen.append((field, filename))
        return "stored.bin"

    folder = tmp_path / "named"
    folder.mkdir()
    form = asyncio.run(
        receive_form(Request(scope, receive), folder, CAPS, FIELDS, name_for, idle_seconds=5, total_seconds=5)
    )
    assert seen == [("reference", "a\ufffdb.jpg")]
    assert form.files["reference"].filename == "a\ufffdb.jpg"
    assert (folder / "stored.bin").read_bytes() == b"DATA"
    assert form.fields == {"width": "1\ufffd"}
    bad_name = f"--{BOUNDARY}\r\n".encode() + b'Content-Disposition: form-data; name="w\xff"\r\n\r\nx\r\n'
    error = parse(tmp_path, body(bad_name))
    assert (error.status, error.code, error.message) == (422, "unknown_field", "unknown field 'w\ufffd'")


def test_a_part_header_name_of_exactly_4_kib_is_fine(tmp_path: Path) -> None:
    name = b"X-" + b"n" * (MAX_HEADER_BYTES - 2) + b": v\r\n"
    assert parse(tmp_path, body(part("width", b"1", headers=name)), chunk=1000).fields == {"width": "1"}


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\udcffb.png", "ab.png"),
        ("a\ue000b.png", "ab.png"),
        ("a\u0378b.png", "ab.png"),
        ("a\U000f0000b", "ab"),
    ],
)
def test_display_name_drops_surrogates_private_use_and_unassigned(raw: str, shown: str) -> None:
    assert display_name(raw) == shown
