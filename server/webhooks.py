"""Completion webhooks, signed the Standard Webhooks way (``webhook-id``, ``-timestamp``, ``-signature``).

The signature is ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")). Delivery is retried
with exponential backoff on a background thread, so a slow receiver never holds up the next job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("server.webhooks")

DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before each retry


class PrivateTarget(ValueError):
    pass


def check_target(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs, and hosts that resolve to loopback / private / link-local addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrivateTarget("webhook_url must be an http(s) URL")
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except OSError as exc:
        raise PrivateTarget(f"webhook host does not resolve: {parts.hostname}") from exc
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise PrivateTarget("webhook targets on private networks are refused")


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
            check_target(url, allow_private)  # again at delivery: DNS may have changed since submission
        except PrivateTarget as exc:
            log.warning("webhook %s refused: %s", message_id, exc)
            return False
        timestamp = int(time.time())
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "user-agent": "animate-webhooks",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, message_id, timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if 200 <= response.status < 300:
                    return True
        except Exception as exc:
            log.info("webhook %s attempt %d failed: %s", message_id, attempt + 1, exc)
    log.warning("webhook %s gave up after %d attempts", message_id, len(delays) + 1)
    return False


def deliver_in_background(url: str, body: bytes, message_id: str, secret: str, allow_private: bool) -> None:
    threading.Thread(
        target=deliver, args=(url, body, message_id, secret, allow_private), name="webhook", daemon=True
    ).start()
