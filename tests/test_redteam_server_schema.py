"""Red team (issue 20): what a job's JSON promises about its files, from a job row built by hand.

A succeeded job offers its video and artifacts until retention deletes its files; then it says
``expired: true`` and offers no URL. ``expires_at`` is the job's end plus the retention, never its
submission plus the retention (a job that queued for a day still keeps its files for the whole period).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.models import Job
from server.schemas import job_out

CREATED = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
FINISHED = datetime(2026, 1, 2, 9, 30, tzinfo=UTC)  # a day and a half later


def _job(status: str, **values) -> Job:
    values.setdefault("files_deleted", False)  # the column default applies at insert; no row here
    return Job(
        id="j1", owner="a", status=status, options={}, reference_name="reference.jpg",
        driving_name="driving.mp4", created_at=CREATED, attempts=1, fraction=1.0, step=0, total=0,
        **values,
    )  # fmt: skip


def test_a_succeeded_job_offers_its_video_and_artifacts_until_its_files_are_deleted() -> None:
    live = job_out(_job("succeeded", finished_at=FINISHED, files_deleted=False), None, ["skeleton"])
    assert live.urls.video == "/v1/jobs/j1/video" and live.expired is False
    assert live.urls.artifacts == {"skeleton": "/v1/jobs/j1/artifacts/skeleton"}
    gone = job_out(_job("succeeded", finished_at=FINISHED, files_deleted=True), None, ["skeleton"])
    assert gone.expired is True
    assert gone.urls.video is None and gone.urls.artifacts == {}
    assert gone.urls.self == "/v1/jobs/j1" and gone.urls.cancel == "/v1/jobs/j1/cancel"


def test_only_a_succeeded_job_offers_a_video() -> None:
    for status in ("queued", "running", "failed", "canceled"):
        out = job_out(_job(status, files_deleted=False), None, ["skeleton"])
        assert out.urls.video is None and out.urls.artifacts == {}, status


def test_expires_at_is_the_end_plus_the_retention() -> None:
    out = job_out(_job("succeeded", finished_at=FINISHED), None, [], timedelta(hours=24))
    assert out.expires_at == datetime(2026, 1, 3, 9, 30, tzinfo=UTC)
    assert job_out(_job("running"), None, [], timedelta(hours=24)).expires_at is None  # not finished yet
    assert job_out(_job("succeeded", finished_at=FINISHED), None, []).expires_at is None  # no retention given
