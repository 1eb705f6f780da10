"""Completion webhooks, signed the Standard Webhooks way (``webhook-id``, ``-timestamp``, ``-signature``).

The signature is ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")). Delivery is retried
with exponential backoff on a background thread, so a slow receiver never holds up the next job.

Targets must be public: every address the host resolves to is checked (IPv4 wrapped in IPv6 is unwrapped
and checked as itself), at submission and again before each delivery, which then connects to the checked
address; a 3xx answer is a failed delivery, never followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import logging
import secrets
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("server.webhooks")

DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before each retry


class PrivateTarget(ValueError):
    pass


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a site's own translator


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries: mapped, compatible, NAT64, 6to4, Teredo (server, client)."""
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if int(address) >> 32 == 0 or address in _NAT64:  # ::a.b.c.d (deprecated "compatible"), NAT64
        return [low]
    if address.sixtofour is not None:
        return [address.sixtofour]
    return list(address.teredo or ())


def check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Refuse a non-global address, or an IPv6 one that wraps a non-global IPv4 address."""
    embedded = _embedded_ipv4(address) if address.version == 6 else []
    if not address.is_global or address in _LOCAL_NAT64 or any(not v4.is_global for v4 in embedded):
        raise PrivateTarget("webhook targets on private networks are refused")


def check_target(url: str, allow_private: bool) -> list[str]:
    """The addresses to send to: refuses non-http(s) URLs and hosts with any non-global address.

    With ``allow_private`` nothing is resolved or checked: the host name itself is returned.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a bad port or bracketed host
        raise PrivateTarget("webhook_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrivateTarget("webhook_url must be an http(s) URL")
    if allow_private:
        return [parts.hostname]
    try:
        addresses = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(parts.hostname, port)))
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label IDNA cannot encode
        raise PrivateTarget(f"webhook host does not resolve: {parts.hostname}") from exc
    for address in addresses:
        check_address(ipaddress.ip_address(address.split("%")[0]))
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to a moment later."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def post_pinned(url: str, address: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> int:
    """One POST to ``address``; the status code. Redirects are answers, never followed."""
    parts = urlsplit(url)
    pinned = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = pinned(parts.hostname, parts.port or pinned.default_port, address, timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body, headers)
        return connection.getresponse().status
    finally:
        connection.close()


def load_secret(configured: str, data_dir: Path) -> str:
    """The configured secret, else one generated once and kept in the data folder."""
    if configured:
        return configured
    path = Path(data_dir) / "webhook_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = base64.b64encode(secrets.token_bytes(32)).decode()
        try:
            with open(path, "x") as handle:  # first writer wins when workers race
                handle.write(fresh)
            path.chmod(0o600)
        except FileExistsError:
            pass
    return path.read_text().strip()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def deliver(url: str, body: bytes, message_id: str, secret: str, allow_private: bool, delays=DELAYS) -> bool:
    """POST until a 2xx answers or the retries run out."""
    for attempt, delay in enumerate((0.0, *delays)):
        time.sleep(delay)
        try:
            addresses = check_target(url, allow_private)  # again at delivery: DNS may have changed
        except PrivateTarget as exc:
            log.warning("webhook %s refused: %s", message_id, exc)
            return False
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "animate-webhooks",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
        }
        try:
            status = post_pinned(url, addresses[0], body, headers)
        except Exception as exc:
            log.info("webhook %s attempt %d failed: %s", message_id, attempt + 1, exc)
            continue
        if 200 <= status < 300:
            return True
        log.info(
            "webhook %s attempt %d answered %d (redirects are not followed)", message_id, attempt + 1, status
        )
    log.warning("webhook %s gave up after %d attempts", message_id, len(delays) + 1)
    return False


def deliver_in_background(url: str, body: bytes, message_id: str, secret: str, allow_private: bool) -> None:
    threading.Thread(
        target=deliver, args=(url, body, message_id, secret, allow_private), name="webhook", daemon=True
    ).start()
