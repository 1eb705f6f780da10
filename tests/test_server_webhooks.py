"""Webhook signing, the secret file and delivery retries, against a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.webhooks import PrivateTarget, check_target, deliver, load_secret, sign


def test_signature_is_standard_webhooks_hmac():
    # Standard Webhooks: base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), versioned "v1,".
    mac = hmac.new(b"s3cret", b'msg_1.1700000000.{"a": 1}', hashlib.sha256).digest()
    assert sign("s3cret", "msg_1", 1700000000, b'{"a": 1}') == "v1," + base64.b64encode(mac).decode()


def test_secret_is_configured_or_generated_once(tmp_path):
    assert load_secret("configured", tmp_path) == "configured"
    assert not (tmp_path / "webhook_secret").exists()
    first = load_secret("", tmp_path / "data")
    assert len(base64.b64decode(first)) == 32
    assert load_secret("", tmp_path / "data") == first
    assert os.stat(tmp_path / "data" / "webhook_secret").st_mode & 0o777 == 0o600
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "webhook_secret").write_text("from-disk\n")
    assert load_secret("", tmp_path / "kept") == "from-disk"


@pytest.fixture
def receiver():
    """A local server answering the queued statuses in turn (then 204); it records each request."""
    calls: list[dict] = []
    answers: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status = answers.pop(0) if answers else 204
            self.send_response(status)
            if status == 302:
                self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook?x=1", calls, answers, Handler
    server.shutdown()
    server.server_close()


def test_delivery_retries_until_a_2xx_and_signs_each_attempt(receiver):
    url, calls, answers, _ = receiver
    answers += [300, 302]  # 3xx are answers, not followed: only 2xx is a delivery
    assert deliver(url, b'{"job": 1}', "msg_7", "key", allow_private=True, delays=(0.0, 0.0, 0.0)) is True
    assert len(calls) == 3 and all(c["path"] == "/hook?x=1" for c in calls)
    for call in calls:
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert call["body"] == b'{"job": 1}'
        assert (headers["webhook-id"], headers["content-type"]) == ("msg_7", "application/json")
        expected = sign("key", "msg_7", int(headers["webhook-timestamp"]), b'{"job": 1}')
        assert headers["webhook-signature"] == expected


def test_delivery_gives_up_after_the_retries(receiver):
    url, calls, answers, _ = receiver
    answers += [503] * 5
    assert deliver(url, b"{}", "msg_8", "key", allow_private=True, delays=(0.0, 0.0)) is False
    assert len(calls) == 3  # the first attempt and one per delay


def test_delivery_to_a_private_address_is_refused_without_a_request(receiver):
    url, calls, _, _ = receiver
    assert deliver(url, b"{}", "msg_9", "key", allow_private=False, delays=(0.0,)) is False
    assert calls == []


def test_a_connection_failure_is_retried(receiver):
    # Nothing listens on the port at the first attempt; a server comes up before the retry.
    _, calls, _, handler = receiver
    probe = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = probe.server_port
    probe.server_close()
    started: list[ThreadingHTTPServer] = []

    def start():
        started.append(ThreadingHTTPServer(("127.0.0.1", port), handler))
        threading.Thread(target=started[0].serve_forever, daemon=True).start()

    timer = threading.Timer(0.3, start)
    timer.start()
    try:
        assert deliver(f"http://127.0.0.1:{port}/late", b"{}", "msg_10", "key", True, delays=(1.5,)) is True
    finally:
        timer.join()
        for server in started:
            server.shutdown()
            server.server_close()
    assert [call["path"] for call in calls] == ["/late"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host:99999/x", "webhook_url is not a valid URL"),
        ("ftp://example.com/x", "webhook_url must be an http(s) URL"),
        ("http:///x", "webhook_url must be an http(s) URL"),
        ("http://10.0.0.1/x", "webhook targets on private networks are refused"),
        ("https://[::ffff:192.168.1.1]/x", "webhook targets on private networks are refused"),
        ("http://no-such-host.invalid/x", "webhook host does not resolve: no-such-host.invalid"),
    ],
)
def test_target_refusals(url, message):
    with pytest.raises(PrivateTarget) as excinfo:
        check_target(url, allow_private=False)
    assert str(excinfo.value) == message


def test_targets_allowed_and_resolved():
    # Private hosts are allowed as named (not resolved) only when the operator says so; https counts too.
    assert check_target("https://10.0.0.1:8443/x", allow_private=True) == ["10.0.0.1"]
    assert check_target("http://8.8.8.8/x", allow_private=False) == ["8.8.8.8"]
    assert check_target("https://[2001:4860:4860::8888]/x", allow_private=False) == ["2001:4860:4860::8888"]
