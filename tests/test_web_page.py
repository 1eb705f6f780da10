"""The web page in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

`animate serve` runs as a subprocess; the test picks the shared photo and clip in the form, submits, sees the
progress bar and stage move, then the result playing in the ``<video>``, the guidance previews and the job
in the recent list. Skips when ``/usr/bin/chromium`` is missing, unless ``ANIMATE_REQUIRE_SERVICES=1``
(``make test`` installs the Debian package first where it can).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import DANCE, WOMAN_JPG
from tests.test_server_e2e import Cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Everything the page shows while the job runs, recorded in the page so no state change is missed.
RECORD_STATES = """
window.__seen = [];
document.addEventListener("DOMContentLoaded", () => {
  const note = () => window.__seen.push({
    status: document.getElementById("status").textContent,
    stage: document.getElementById("stage").textContent,
    bar: Number(document.getElementById("bar").value),
  });
  new MutationObserver(note).observe(document.getElementById("job"), {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
});
"""
VIDEO_PLAYS = """
async () => {
  const video = document.getElementById("result");
  video.muted = true;
  await video.play();
  await new Promise((resolve) => setTimeout(resolve, 500));
  return {
    src: video.currentSrc, readyState: video.readyState, duration: video.duration,
    width: video.videoWidth, height: video.videoHeight, time: video.currentTime, error: video.error && video.error.code,
  };
}
"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found (Debian package 'chromium'; `make test` installs it)"
        if os.environ.get("ANIMATE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def test_page_submits_shows_progress_and_plays_the_result(
    tmp_path: Path, data_dir: Path, chromium: Path
) -> None:
    from playwright.sync_api import sync_playwright

    cluster = Cluster(tmp_path)
    try:
        cluster.start_api(workers=1)
        url = f"http://127.0.0.1:{cluster.port}/"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.add_init_script(RECORD_STATES)
                page.goto(url)
                page.set_input_files("input[name=reference]", str(WOMAN_JPG))
                page.set_input_files("input[name=driving]", str(DANCE))
                page.select_option("select[name=engine]", "warp")
                page.select_option("select[name=size]", "288x512")
                page.fill("input[name=max_frames]", "8")
                page.click("button[type=submit]")

                page.wait_for_function("document.getElementById('job-id').textContent.length === 32")
                job_id = page.text_content("#job-id")
                page.wait_for_function(
                    "document.getElementById('bar').value > 0 && document.getElementById('stage').textContent",
                    timeout=120_000,
                )
                page.wait_for_selector("#result:not([hidden])", timeout=180_000)
                page.wait_for_function(
                    "(() => { const v = document.getElementById('result'); return v.readyState >= 1 && v.duration > 0; })()",
                    timeout=30_000,
                )
                video = page.evaluate(VIDEO_PLAYS)
                assert video["src"].endswith(f"/v1/jobs/{job_id}/video"), video
                assert video["error"] is None and video["readyState"] >= 2, video
                assert (video["width"], video["height"]) == (288, 512), video
                assert video["duration"] > 0 and video["time"] > 0, video  # it plays
                assert page.text_content("#status") == "succeeded"
                assert page.eval_on_selector("#bar", "bar => bar.value") == 1

                seen = page.evaluate("window.__seen")
                running = [s for s in seen if s["status"] == "running"]
                assert running and any(s["stage"] and 0 < s["bar"] < 1 for s in running), seen

                previews = page.eval_on_selector_all("#previews video", "vs => vs.map(v => v.title)")
                assert {"skeleton", "motion"} <= set(previews) and "poses" not in previews, previews
                page.wait_for_function(
                    "[...document.querySelectorAll('#previews video')].every(v => v.readyState >= 1 && v.duration > 0)",
                    timeout=30_000,
                )

                row = page.wait_for_selector(f"#recent tr[data-id='{job_id}']")
                assert "succeeded" in row.text_content()
                assert errors == [], errors
            finally:
                browser.close()
    finally:
        cluster.stop()
