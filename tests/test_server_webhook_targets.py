"""Webhook targets and delivery in-process: which addresses are private (IPv4 carried inside IPv6 included,
classified by hand from the RFCs), the port and host a delivery resolves and connects to, the retry schedule,
the success statuses, the headers, the log lines and the background thread. DNS, sockets, TLS and sleeping
are replaced by recorders; the real-server tests are in test_server_webhooks.py.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server import webhooks
from server.webhooks import PrivateTarget, check_address, check_target, deliver, post_pinned, sign


def refused(address: str) -> bool:
    try:
        check_address(ipaddress.ip_address(address))
    except PrivateTarget as exc:
        assert str(exc) == "webhook targets on private networks are refused"
        return True
    return False


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("10.1.2.3", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("192.168.0.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("2001:4860:4860::8888", False),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:8.8.8.8", False),  # IPv4-mapped: judged as the IPv4 address
        ("::ffff:10.0.0.1", True),
        ("::10.0.0.1", True),  # deprecated IPv4-compatible
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::808:808", True),  # a site's own NAT64 prefix (RFC 8215)
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("2002:a00:1::1", True),  # 6to4 of 10.0.0.1
        ("2002:c0a8:101::1", True),  # 6to4 of 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", True),  # Teredo, client 10.0.0.1 (obfuscated)
        ("2001:0:a00:1:8000:63bf:3fff:fdd2", True),  # Teredo, server 10.0.0.1
    ],
)
def test_private_addresses(address: str, private: bool) -> None:
    assert refused(address) is private


def test_embedded_ipv4_by_hand() -> None:
    embedded = webhooks._embedded_ipv4
    v6 = ipaddress.IPv6Address
    v4 = ipaddress.IPv4Address
    assert embedded(v6("::ffff:1.2.3.4")) == [v4("1.2.3.4")]
    assert embedded(v6("::1.2.3.4")) == [v4("1.2.3.4")]
    assert embedded(v6("64:ff9b::102:304")) == [v4("1.2.3.4")]
    assert embedded(v6("2002:102:304::9")) == [v4("1.2.3.4")]
    # Teredo: server in bits 32-63, client = inverted last 32 bits
    assert embedded(v6("2001:0:102:304:0:0:f5ff:fffe")) == [v4("1.2.3.4"), v4("10.0.0.1")]
    assert embedded(v6("2001:4860::1")) == []
    assert embedded(v6("1:0:0:0:0:0:102:304")) == []  # high bits set: not "compatible"
    assert embedded(v6("::1:a00:1")) == []  # bit 32 set: not "compatible" either


class Resolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int, *args, **kwargs):
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError("no such host")
        return [(2, 1, 6, "", (address, port)) for address in self.answers[host]]


@pytest.fixture()
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    r = Resolver(
        {
            "public.test": ["8.8.8.8", "8.8.4.4", "8.8.8.8"],
            "mixed.test": ["8.8.8.8", "10.0.0.1"],
            "scoped.test": ["2001:4860:4860::8888%eth0"],
            "linklocal.test": ["fe80::1%eth0"],
        }
    )
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", r)
    return r


def test_targets_resolve_on_the_urls_port(resolver: Resolver) -> None:
    assert check_target("https://public.test/x", False) == ["8.8.8.8", "8.8.4.4"]  # each once, in order
    assert check_target("http://public.test/x", False) == ["8.8.8.8", "8.8.4.4"]
    assert check_target("http://public.test:8080/x", False) == ["8.8.8.8", "8.8.4.4"]
    assert check_target("https://public.test:8443/x", False) == ["8.8.8.8", "8.8.4.4"]
    assert resolver.asked == [
        ("public.test", 443),
        ("public.test", 80),
        ("public.test", 8080),
        ("public.test", 8443),
    ]


def test_one_private_address_refuses_the_host(resolver: Resolver) -> None:
    with pytest.raises(PrivateTarget, match="private networks"):
        check_target("https://mixed.test/x", False)
    with pytest.raises(PrivateTarget, match="private networks"):
        check_target("https://linklocal.test/x", False)
    assert check_target("https://scoped.test/x", False) == ["2001:4860:4860::8888%eth0"]


def test_allow_private_resolves_nothing(resolver: Resolver) -> None:
    assert check_target("http://mixed.test:9/x", True) == ["mixed.test"]
    assert resolver.asked == []
    with pytest.raises(PrivateTarget, match="must be an http"):
        check_target("file:///etc/passwd", True)
    with pytest.raises(PrivateTarget, match="not a valid URL"):
        check_target("http://[::1/x", True)


def test_a_name_idna_cannot_encode_does_not_resolve() -> None:
    with pytest.raises(PrivateTarget, match="does not resolve"):
        check_target("http://" + "a" * 64 + ".example/x", False)  # a label over 63 characters


# --- connecting to the checked address ------------------------------------------------------------------


@pytest.fixture()
def server():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.append(
                {"path": self.path, "host": self.headers["host"], "body": body, "headers": self.headers}
            )
            self.send_response(302 if self.path.startswith("/redirect") else 201)
            self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port, seen
    httpd.shutdown()
    httpd.server_close()


def test_post_goes_to_the_pinned_address_with_the_urls_host_and_path(server) -> None:
    port, seen = server
    # the name does not resolve at all: only the pinned address is used
    url = f"http://receiver.invalid:{port}/hook?a=1&b=2"
    assert post_pinned(url, "127.0.0.1", b"payload", {"x-test": "1"}) == 201
    assert seen[0]["path"] == "/hook?a=1&b=2" and seen[0]["host"] == f"receiver.invalid:{port}"
    assert seen[0]["body"] == b"payload" and seen[0]["headers"]["x-test"] == "1"
    assert post_pinned(f"http://receiver.invalid:{port}", "127.0.0.1", b"", {}) == 201
    assert seen[1]["path"] == "/"
    assert post_pinned(f"http://receiver.invalid:{port}/redirect", "127.0.0.1", b"", {}) == 302
    assert [s["path"] for s in seen] == ["/hook?a=1&b=2", "/", "/redirect"]  # not followed


class FakeSocket:
    def close(self) -> None:
        pass


def test_https_connects_to_the_address_and_verifies_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []

    plain = FakeSocket()

    def create_connection(address, timeout):
        calls.append(("connect", address, timeout))
        return plain

    class Context:
        def wrap_socket(self, sock, server_hostname):
            calls.append(("tls", sock is plain, server_hostname))
            return sock

    monkeypatch.setattr(webhooks.socket, "create_connection", create_connection)
    monkeypatch.setattr(webhooks.ssl, "create_default_context", Context)
    connection = webhooks._PinnedHTTPS("hooks.example.com", 443, "203.0.113.9", 7.5)
    connection.connect()
    assert calls == [("connect", ("203.0.113.9", 443), 7.5), ("tls", True, "hooks.example.com")]
    assert webhooks._PinnedHTTPS.default_port == 443

    made: list = []

    class Recorder(webhooks._PinnedHTTPS):
        def __init__(self, host, port, address, timeout):
            made.append((host, port, address, timeout))
            super().__init__(host, port, address, timeout)

        def request(self, *args, **kwargs):
            raise ConnectionError("stop here")

    monkeypatch.setattr(webhooks, "_PinnedHTTPS", Recorder)
    with pytest.raises(ConnectionError):
        post_pinned("https://hooks.example.com/x", "203.0.113.9", b"", {})
    with pytest.raises(ConnectionError):
        post_pinned("https://hooks.example.com:9443/x", "203.0.113.9", b"", {}, timeout=3.0)
    assert made == [
        ("hooks.example.com", 443, "203.0.113.9", 10.0),
        ("hooks.example.com", 9443, "203.0.113.9", 3.0),
    ]


def test_plain_http_defaults_to_port_80(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(webhooks.socket, "create_connection", lambda a, t: calls.append(a) or FakeSocket())
    connection = webhooks._PinnedHTTP("hooks.example.com", 80, "203.0.113.9", 1.0)
    connection.connect()
    assert calls == [("203.0.113.9", 80)]
    with pytest.raises(Exception):  # noqa: B017 - the fake socket cannot send
        post_pinned("http://hooks.example.com/x", "203.0.113.9", b"", {})
    assert calls[-1] == ("203.0.113.9", 80)


# --- delivery: schedule, statuses, headers, logs ----------------------------------------------------------


class Wire:
    """post_pinned and time.sleep replaced: answers statuses (or raises) in turn, records everything."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list, addresses=("8.8.8.8", "8.8.4.4")):
        self.answers = list(answers)
        self.posts: list[dict] = []
        self.slept: list[float] = []
        self.addresses = list(addresses)
        monkeypatch.setattr(webhooks, "post_pinned", self.post)
        monkeypatch.setattr(webhooks.time, "sleep", self.slept.append)
        monkeypatch.setattr(webhooks, "check_target", self.check)

    def check(self, url: str, allow_private: bool) -> list[str]:
        if isinstance(self.addresses, Exception):
            raise self.addresses
        return self.addresses

    def post(self, url, address, body, headers):
        self.posts.append({"url": url, "address": address, "body": body, "headers": headers})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_default_schedule_doubles_from_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    assert webhooks.DELAYS == (1.0, 2.0, 4.0, 8.0, 16.0)
    wire = Wire(monkeypatch, [500] * 6)
    assert deliver("https://h.test/x", b"{}", "m", "k", False) is False
    assert wire.slept == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(wire.posts) == 6


@pytest.mark.parametrize(
    ("status", "delivered"), [(100, False), (199, False), (200, True), (204, True), (299, True), (300, False)]
)
def test_only_2xx_is_delivered(monkeypatch: pytest.MonkeyPatch, status: int, delivered: bool) -> None:
    wire = Wire(monkeypatch, [status, 500])
    assert deliver("https://h.test/x", b"{}", "m", "k", False, delays=(0.5,)) is delivered
    assert len(wire.posts) == (1 if delivered else 2)


def test_each_attempt_is_signed_afresh_and_sent_to_the_first_address(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Wire(monkeypatch, [ConnectionError("refused"), 204])
    clock = iter([1_700_000_000.7, 1_700_000_003.2])
    monkeypatch.setattr(webhooks.time, "time", lambda: next(clock))
    assert deliver("https://h.test/x", b'{"a": 1}', "msg_1", "sec", False, delays=(3.0,)) is True
    assert [p["address"] for p in wire.posts] == ["8.8.8.8", "8.8.8.8"]
    assert [p["url"] for p in wire.posts] == ["https://h.test/x"] * 2
    for post, timestamp in zip(wire.posts, (1_700_000_000, 1_700_000_003), strict=True):
        assert post["body"] == b'{"a": 1}'
        assert post["headers"] == {
            "content-type": "application/json",
            "user-agent": "animate-webhooks",
            "webhook-id": "msg_1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign("sec", "msg_1", timestamp, b'{"a": 1}'),
        }


def test_a_target_that_turns_private_stops_delivery(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    wire = Wire(monkeypatch, [])
    wire.addresses = PrivateTarget("webhook targets on private networks are refused")
    with caplog.at_level(logging.INFO, logger="server.webhooks"):
        assert deliver("https://h.test/x", b"{}", "msg_2", "k", False, delays=(1.0, 1.0)) is False
    assert wire.posts == [] and wire.slept == [0.0]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "webhook msg_2 refused: webhook targets on private networks are refused")
    ]


def test_log_lines_name_the_attempt_and_the_outcome(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    Wire(monkeypatch, [OSError("boom"), 302, 503])
    with caplog.at_level(logging.INFO, logger="server.webhooks"):
        assert deliver("https://h.test/x", b"{}", "msg_3", "k", False, delays=(0.0, 0.0)) is False
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "webhook msg_3 attempt 1 failed: boom"),
        (logging.INFO, "webhook msg_3 attempt 2 answered 302 (redirects are not followed)"),
        (logging.INFO, "webhook msg_3 attempt 3 answered 503 (redirects are not followed)"),
        (logging.WARNING, "webhook msg_3 gave up after 3 attempts"),
    ]


def test_background_delivery_runs_on_a_daemon_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    done = threading.Event()
    seen: list = []

    def fake_deliver(*args):
        seen.append((args, threading.current_thread().name, threading.current_thread().daemon))
        done.set()

    monkeypatch.setattr(webhooks, "deliver", fake_deliver)
    webhooks.deliver_in_background("https://h.test/x", b"{}", "msg_4", "k", True)
    assert done.wait(10)
    assert seen == [(("https://h.test/x", b"{}", "msg_4", "k", True), "webhook", True)]


def test_a_secret_written_by_another_worker_first_is_used(tmp_path: Path, monkeypatch) -> None:
    """The race: both saw no file, the other worker created it first; ours must not overwrite it."""
    path = tmp_path / "webhook_secret"
    path.write_text("theirs\n")
    path.chmod(0o644)
    monkeypatch.setattr(webhooks.Path, "exists", lambda self: False)
    assert webhooks.load_secret("", tmp_path) == "theirs"
    assert path.read_text() == "theirs\n"
    assert os.stat(path).st_mode & 0o777 == 0o644  # not ours to change


def test_a_generated_secret_is_fresh_per_data_folder(tmp_path: Path) -> None:
    first = webhooks.load_secret("", tmp_path / "one" / "deep")
    second = webhooks.load_secret("", tmp_path / "two")
    assert first != second and len(first) == 44  # base64 of 32 bytes
    assert (tmp_path / "one" / "deep" / "webhook_secret").read_text() == first


def test_delivery_does_not_sleep_before_the_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Wire(monkeypatch, [200])
    started = time.monotonic()
    assert deliver("https://h.test/x", b"{}", "m", "k", False) is True
    assert wire.slept == [0.0] and time.monotonic() - started < 5
