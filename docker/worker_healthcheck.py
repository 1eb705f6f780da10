"""Docker HEALTHCHECK of a worker container: exit 0 while a worker process of this host heartbeats.

Workers record ``hostname:pid:...`` and a heartbeat in the job database every maintenance period
(``server.worker``); a container's hostname is its own, so a fresh record with it means the worker in this
container is alive. Reads the same ``ANIMATE_*`` settings as the worker.
"""

from __future__ import annotations

import socket
import sys
from datetime import timedelta


def main() -> int:
    from animate.settings import Settings
    from server.models import utcnow
    from server.store import JobStore
    from server.worker import database_url

    settings = Settings()
    store = JobStore(database_url(settings))
    try:
        cutoff = utcnow() - timedelta(seconds=settings.server.stale_after_seconds)
        host = socket.gethostname()
        live = [w for w in store.workers() if w.hostname == host and w.heartbeat_at >= cutoff]
    finally:
        store.close()
    if not live:
        print(
            f"no worker of {host} heartbeat within {settings.server.stale_after_seconds:g} s", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
