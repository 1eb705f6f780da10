"""The web page on a server that asks for API keys: the page asks for the key, sends it with every request
(uploads and media included), and a job runs to its result.

Expectations come from outside the page: the API refuses keyless requests (401) and the job recorded under
the right key is the one the page shows. Same headless Chromium as tests/test_web_page.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DANCE, WOMAN_JPG
from tests.test_server_e2e import Cluster
from tests.test_web_page import CHROMIUM_ARGS, DESKTOP, MEDIA_STATE, chromium, drop  # noqa: F401 - fixture

KEY = "web-page-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, data_dir: Path, chromium: Path):  # noqa: F811 - the imported fixture
    root = tmp_path_factory.mktemp("web-keys")
    cluster = Cluster(
        root,
        env={"ANIMATE_WEIGHTS_DIR": str(root / "no-weights"), "ANIMATE_SERVER__API_KEYS": json.dumps([KEY])},
    )
    try:
        cluster.start_api(workers=1)
        yield cluster
    finally:
        cluster.stop()


def test_the_page_asks_for_the_key_and_then_works_with_it(keyed_server: Cluster, chromium: Path) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    headers = {"Authorization": f"Bearer {KEY}"}
    assert keyed_server.http.get("/v1/engines").status_code == 401  # the server really asks for a key
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=DESKTOP).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{keyed_server.port}/")
            # the page's first calls were refused: it asks for a key instead of showing a dead form
            page.wait_for_selector("#key-form:not([hidden])")
            assert "asks for an API key" in page.text_content("#key-hint")
            assert page.locator("label[data-engine=warp]").count() == 0  # the engines did not load

            page.fill("#api-key", "not-the-key")
            page.click("#use-key")
            page.wait_for_function("document.getElementById('key-hint').textContent.includes('not accepted')")
            assert page.is_visible("#key-form")

            page.fill("#api-key", KEY)
            page.press("#api-key", "Enter")
            page.wait_for_selector("label[data-engine=warp]")  # the engines came with the key
            assert page.is_hidden("#key-form")
            stored = page.evaluate("[sessionStorage.getItem('animate-api-key'), localStorage.length]")
            assert stored == [KEY, 0]  # this tab only, never kept on disk

            drop(page, "#reference-drop", WOMAN_JPG.name, "image/jpeg", WOMAN_JPG.read_bytes())
            drop(page, "#driving-drop", DANCE.name, "video/mp4", DANCE.read_bytes())
            page.check("input[name=engine][value=warp]")
            page.select_option("select[name=size]", "288x512")
            page.fill("input[name=max_frames]", "4")
            page.click("#go")
            page.wait_for_function("document.getElementById('job-id').textContent.length === 32")
            job_id = page.text_content("#job-id")
            # the upload carried the key: the job belongs to it, and a keyless caller cannot see it
            assert keyed_server.http.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
            assert keyed_server.http.get(f"/v1/jobs/{job_id}").status_code == 401

            page.wait_for_selector("#outcome:not([hidden])", timeout=180_000)
            page.wait_for_function("document.getElementById('result').readyState >= 2", timeout=30_000)
            result = page.evaluate(MEDIA_STATE, ["result"])["result"]
            assert result["error"] is None and (result["width"], result["height"]) == (288, 512)
            # a <video> cannot send the key, so the page fetched the video with it and plays it from memory
            assert result["src"].startswith("blob:")
            assert page.get_attribute("#download", "href").startswith("blob:")
            assert errors == [], errors
        finally:
            browser.close()
