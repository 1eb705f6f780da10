"""``/docs`` works on a server with no outside network: Swagger UI's assets come from this server.

The page is read as HTML (every script and stylesheet URL is on this server and answers with the files of
the installed ``fastapi-offline`` package), then rendered by Debian's headless Chromium with every request
that leaves 127.0.0.1 refused: Swagger UI must list exactly the operations of the server's own
``/openapi.json``. ``/redoc`` is off (ReDoc fetches its logo from a CDN whatever it is told): 404, not a
blank page. Skips the browser test without ``/usr/bin/chromium`` unless ``ANIMATE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.test_server_e2e import Cluster
from tests.test_web_page import CHROMIUM, CHROMIUM_ARGS


class _Refs(HTMLParser):
    """Every URL a page loads by itself: script src, link href, img src, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for key in ("src", "href", "spec-url"):
            if tag in ("script", "link", "img", "redoc") and named.get(key):
                self.urls.append(named[key])


def page_urls(html: str) -> list[str]:
    """URLs in tags plus those the inline script passes to the UI (``url: '/openapi.json'``)."""
    parser = _Refs()
    parser.feed(html)
    inline = re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)
    return parser.urls + inline


def package_static() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    cluster = Cluster(root, env={"ANIMATE_WEIGHTS_DIR": str(root / "no-weights")})
    try:
        cluster.start_api(workers=0)
        yield cluster
    finally:
        cluster.stop()


def test_docs_page_loads_only_local_assets_which_are_the_packaged_files(api: Cluster) -> None:
    path = "/docs"
    page = api.http.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = page_urls(page.text)
    assert urls, "the page loads no assets at all"
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), f"{path} loads {url}"
    assets = [u for u in urls if u.startswith("/docs-assets/")]
    kinds = {Path(u).suffix for u in assets}
    assert {".js", ".css"} <= kinds, urls
    for url in assets:
        answer = api.http.get(url)
        assert answer.status_code == 200, url
        assert answer.content == (package_static() / Path(url).name).read_bytes(), url
        expected = {"js": "javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[1]]
        assert expected in answer.headers["content-type"], (url, answer.headers["content-type"])
    assert "/openapi.json" in urls  # the spec the UI reads is this server's


def test_redoc_is_off_and_the_docs_do_not_appear_in_the_api_schema(api: Cluster) -> None:
    assert api.http.get("/redoc").status_code == 404
    spec = api.http.get("/openapi.json").json()
    assert not any(p.startswith(("/docs", "/redoc")) for p in spec["paths"])
    assert any(p.startswith("/v1/jobs") for p in spec["paths"])


# ------------------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def offline_browser(api: Cluster):
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found (Debian package 'chromium'; `make test` installs it)"
        if os.environ.get("ANIMATE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


def offline_page(browser, refused: list[str]):
    """A page whose every request to anywhere but 127.0.0.1 is refused (and noted in ``refused``)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def route(r) -> None:
        host = urlsplit(r.request.url).hostname
        if host in ("127.0.0.1", "localhost") or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    return context, context.new_page()


def test_swagger_ui_renders_every_operation_with_no_outside_network(api: Cluster, offline_browser) -> None:
    spec = api.http.get("/openapi.json").json()
    expected = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete", "head", "options")
    }
    refused: list[str] = []
    errors: list[str] = []
    context, page = offline_page(offline_browser, refused)
    try:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{api.port}/docs")
        page.wait_for_selector(".opblock-summary", timeout=30_000)
        shown = page.eval_on_selector_all(
            ".opblock-summary",
            """rows => rows.map(r => [
                r.querySelector('.opblock-summary-method').textContent.trim(),
                r.querySelector('.opblock-summary-path').getAttribute('data-path')])""",
        )
        title = page.text_content(".info .title")
    finally:
        context.close()
    assert refused == [] and errors == []
    assert {(m, p) for m, p in shown} == expected
    assert "animate" in (title or "")
