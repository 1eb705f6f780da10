"""Red team (issue 20): the job routes with two real API keys against a real SQLite store, on the paths
the other API tests do not reach (the idempotency race, caps without keys, ...).

Each test states the rule it pins; the expectation is written out (which key owns which job), never taken
from an earlier run of the code.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from server import create_app
from tests.test_server_api import KEY_A, KEY_B, assert_error, make_settings, submit


def _keys() -> tuple[dict, dict]:
    return ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))  # type: ignore[return-value]


def test_the_idempotency_race_replays_the_callers_own_job_never_another_keys(tmp_path: Path) -> None:
    """Two submits with one Idempotency-Key race: the second sees no job at its first look, loses the insert
    to the unique (owner, key) constraint, and must then replay the winner, which is its own key's job. Key B
    holds a job under the same key text; it must not come back to A (nor may the request fail)."""
    settings = make_settings(tmp_path, api_keys=[KEY_A, KEY_B], rate_limit_per_minute=1000)
    with TestClient(create_app(settings)) as client:
        a, b = _keys()
        job_b = submit(client, data={"max_frames": 4}, headers={**b, "Idempotency-Key": "race"}).json()
        job_a = submit(client, data={"max_frames": 4}, headers={**a, "Idempotency-Key": "race"}).json()
        assert job_a["id"] != job_b["id"]

        store = client.app.state.animate.store
        real = store.find_idempotent
        calls: list[tuple[str, str]] = []

        def first_look_misses(owner: str, key: str):
            calls.append((owner, key))
            return None if len(calls) == 1 else real(owner, key)  # the race: the winner lands meanwhile

        store.find_idempotent = first_look_misses
        try:
            again = submit(client, data={"max_frames": 4}, headers={**a, "Idempotency-Key": "race"})
        finally:
            store.find_idempotent = real
        assert again.status_code == 202, again.text
        assert again.json()["id"] == job_a["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert len(calls) == 2 and calls[0] == calls[1]  # both looks are A's, under A's key
        # and B's job is untouched, still B's only
        assert [j["id"] for j in client.get("/v1/jobs", headers=b).json()["jobs"]] == [job_b["id"]]
        assert len(client.get("/v1/jobs", headers=a).json()["jobs"]) == 1


def test_the_idempotency_race_with_another_body_is_still_key_reused(tmp_path: Path) -> None:
    """The same race, but the loser's body differs from the winner's: 422 idempotency_key_reused."""
    settings = make_settings(tmp_path, api_keys=[KEY_A], rate_limit_per_minute=1000)
    with TestClient(create_app(settings)) as client:
        (a, _) = _keys()
        submit(client, data={"max_frames": 4}, headers={**a, "Idempotency-Key": "race"})
        store = client.app.state.animate.store
        real = store.find_idempotent
        misses = [True]

        def first_look_misses(owner: str, key: str):
            return None if misses and misses.pop() else real(owner, key)

        store.find_idempotent = first_look_misses
        try:
            other = submit(client, data={"max_frames": 5}, headers={**a, "Idempotency-Key": "race"})
        finally:
            store.find_idempotent = real
        assert_error(other, 422, "idempotency_key_reused")


def test_without_api_keys_the_per_key_queued_cap_does_not_apply(tmp_path: Path) -> None:
    """Without keys every caller is the one owner "": a per-key cap of 1 would become a cap of one queued
    job for the whole service, so it is not applied (README: the cap is per API key)."""
    with TestClient(create_app(make_settings(tmp_path, max_queued_per_key=1))) as client:
        ids = [submit(client, data={"max_frames": 4}) for _ in range(3)]
        assert [r.status_code for r in ids] == [202, 202, 202], ids[-1].text
        assert [j["queue_position"] for j in client.get("/v1/jobs").json()["jobs"]] == [2, 1, 0]


def test_with_api_keys_the_cap_is_per_key(tmp_path: Path) -> None:
    """With keys, each key gets its own cap of queued jobs: A at its cap does not stop B."""
    settings = make_settings(
        tmp_path, api_keys=[KEY_A, KEY_B], max_queued_per_key=1, rate_limit_per_minute=1000
    )
    with TestClient(create_app(settings)) as client:
        a, b = _keys()
        assert submit(client, headers=a).status_code == 202
        assert_error(submit(client, headers=a), 429, "queued_limit")
        assert submit(client, headers=b).status_code == 202
        assert_error(submit(client, headers=b), 429, "queued_limit")


def test_cancel_answers_by_the_jobs_state(tmp_path: Path) -> None:
    """queued -> canceled at once; running -> still running (its worker stops it); succeeded or failed ->
    409 job_finished and the job untouched; canceled -> canceled again (idempotent)."""
    with TestClient(create_app(make_settings(tmp_path))) as client:
        store = client.app.state.animate.store
        ids = [submit(client, data={"max_frames": 4}).json()["id"] for _ in range(4)]
        queued, running, succeeded, failed = ids
        for job_id in (running, succeeded, failed):
            claim = store.claim(job_id, "worker-1")
            assert claim is not None and claim.attempt == 1
        assert store.finish(succeeded, 1, "succeeded", output_dir="attempt-1")
        assert store.finish(failed, 1, "failed", error_code="internal_error", error_message="boom")

        assert client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
        assert client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
        assert client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "running"
        assert store.get(running).cancel_requested is True
        for job_id, status in ((succeeded, "succeeded"), (failed, "failed")):
            body = assert_error(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_finished")
            assert status in body["error"]["message"]
            after = store.get(job_id)
            assert (after.status, after.cancel_requested) == (status, False)
        assert client.get(f"/v1/jobs/{failed}").json()["error"]["code"] == "internal_error"


def test_job_events_stream_only_to_the_jobs_key(tmp_path: Path) -> None:
    """Server-sent events of A's finished job: A gets one ``job`` event with the job and the stream ends;
    B gets 404 not_found before any event (no stream that says ``deleted`` or leaks the job)."""
    settings = make_settings(tmp_path, api_keys=[KEY_A, KEY_B], rate_limit_per_minute=1000)
    with TestClient(create_app(settings)) as client:
        a, b = _keys()
        job = submit(client, data={"max_frames": 4}, headers=a).json()
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=a)  # finished: the stream ends after one event
        assert_error(client.get(f"/v1/jobs/{job['id']}/events", headers=b), 404, "not_found")
        response = client.get(f"/v1/jobs/{job['id']}/events", headers=a)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e for e in response.text.split("\n\n") if e]
        assert len(events) == 1 and events[0].startswith("event: job\ndata: ")
        sent = json.loads(events[0].split("data: ", 1)[1])
        assert (sent["id"], sent["status"]) == (job["id"], "canceled")
