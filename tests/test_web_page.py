"""The web page in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

One ``animate serve`` subprocess (one worker, no weights folder) serves every test here. The page is used
the way a person uses it: files dropped on the drop zones (a real ``DataTransfer`` holding the shared photo
and clip), keyboard only, a phone-sized window. Expectations come from outside the page: the API's own
answers (engines, error codes, the job's recorded input names), the sample files' known sizes, element
geometry and pixels of screenshots. Skips when ``/usr/bin/chromium`` is missing, unless
``ANIMATE_REQUIRE_SERVICES=1`` (``make test`` installs the Debian package first where it can).
Screenshots go to ``$ANIMATE_SCREENSHOTS`` when it is set (to look at them), else to a temporary folder.
"""

from __future__ import annotations

import ast
import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DANCE, WOMAN_JPG
from tests.test_server_e2e import Cluster

ROOT = Path(__file__).resolve().parents[1]
APP_JS = ROOT / "server" / "static" / "app.js"
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
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

# Drops one file (bytes given as base64) on a drop zone the way a browser does: dragenter, dragover, drop,
# each carrying the same DataTransfer.
DROP = """
([selector, name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const zone = document.querySelector(selector);
  for (const kind of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }
}
"""
# Everything the job card shows while the job runs, recorded in the page so no state change is missed.
RECORD_STATES = """
window.__seen = [];
document.addEventListener("DOMContentLoaded", () => {
  const note = () => window.__seen.push({
    t: performance.now() / 1000,
    status: document.getElementById("status").dataset.status || "",
    stage: document.getElementById("stage").textContent,
    eta: document.getElementById("eta").textContent,
    bar: Number(document.getElementById("bar").value),
  });
  new MutationObserver(note).observe(document.getElementById("job"), {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
});
"""
MEDIA_STATE = """
(ids) => Object.fromEntries(ids.map((id) => {
  const v = document.getElementById(id) || document.querySelector(id);
  return [id, { time: v.currentTime, paused: v.paused, ready: v.readyState, duration: v.duration,
                width: v.videoWidth, height: v.videoHeight, src: v.currentSrc, error: v.error && v.error.code }];
}))
"""


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found (Debian package 'chromium'; `make test` installs it)"
        if os.environ.get("ANIMATE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir: Path, chromium: Path):
    root = tmp_path_factory.mktemp("web")
    cluster = Cluster(root, env={"ANIMATE_WEIGHTS_DIR": str(root / "no-weights")})
    try:
        cluster.start_api(workers=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def browser(server: Cluster, chromium: Path):
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()


@pytest.fixture()
def page(browser, server: Cluster):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(RECORD_STATES)
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector("label[data-engine=warp]")  # the engines came from the server
    yield page
    context.close()
    assert errors == [], errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("ANIMATE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drop(page, zone: str, name: str, mime: str, data: bytes) -> None:
    page.evaluate(DROP, [zone, name, mime, base64.b64encode(data).decode()])


def box(page, selector: str) -> dict:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not displayed"
    return found


def screenshot_spread(page, path: Path) -> float:
    """Saves a screenshot; the standard deviation of its grey levels (a blank page is ~0)."""
    from PIL import Image

    png = page.screenshot(path=str(path), full_page=True)
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32).std())


def first_frame(mp4: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def choose_with_keyboard(page, path: Path) -> None:
    """Opens the focused file input's picker from the keyboard (Space, else Enter) and picks ``path``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for key in ("Space", "Enter"):  # both open it; on a busy machine Chromium now and then drops one press
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press(key)
        except PlaywrightTimeout:
            continue
        chooser.value.set_files(str(path))
        return
    raise AssertionError(
        f"neither Space nor Enter opened the file picker on {page.evaluate('document.activeElement.id')}"
    )


def error_messages_in_page() -> dict[str, str]:
    """The page's ``ERROR_MESSAGES`` table, read from app.js as text (no browser involved)."""
    source = APP_JS.read_text()
    table = source[
        source.index("const ERROR_MESSAGES = {") : source.index("\n};", source.index("ERROR_MESSAGES"))
    ]
    return dict(re.findall(r'^\s+([a-z0-9_]+): "((?:[^"\\]|\\.)*)",', table, re.M))


# -------------------------------------------------------------------------------------------------- tests
def test_engines_come_from_the_server_and_unavailable_ones_are_greyed_with_the_reason(
    page, server: Cluster
) -> None:
    answer = server.http.get("/v1/engines").json()
    engines = {engine["name"]: engine for engine in answer["engines"]}
    assert engines["diffusion"]["available"] is False  # this server has no weights folder
    for name, engine in engines.items():
        radio = page.locator(f"input[name=engine][value={name}]")
        assert radio.is_disabled() is (not engine["available"]), name
    reason = page.locator("label[data-engine=diffusion] .reason")
    assert reason.is_visible()
    assert "weights folder does not exist" in reason.text_content()
    assert "no-weights" not in reason.text_content()  # the server's own path stays on the server
    # the reason is what a screen reader reads for the disabled option
    described = page.get_attribute("input[value=diffusion]", "aria-describedby")
    assert page.text_content(f"#{described}") == reason.text_content()
    assert page.locator("input[value=auto]").is_checked()
    assert "Warp here" in page.text_content("label[data-engine=auto]")  # what auto picks on this server
    page.click("label[data-engine=diffusion]", force=True)
    assert not page.locator("input[value=diffusion]").is_checked()
    assert page.locator("select[name=preset]").is_disabled()  # presets need the diffusion engine


def test_hints_show_the_servers_limits_and_a_wrong_file_is_refused_before_upload(
    page, server: Cluster
) -> None:
    limits = server.http.get("/v1/limits").json()
    assert f"{limits['reference_max_bytes'] // 2**20} MB" in page.text_content("#reference-hint")
    assert f"{limits['driving_max_bytes'] // 2**20} MB" in page.text_content("#driving-hint")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    drop(page, "#reference-drop", "notes.txt", "text/plain", b"shopping list\n")
    assert "isn't a photo" in page.text_content("#reference-hint")
    assert "invalid" in page.get_attribute("#reference-drop", "class")
    page.click("#go")
    assert page.text_content("#form-hint") == "Add a photo and a video first."
    assert posts == []  # nothing was sent

    # a video dropped on the photo zone is refused too; a photo on it afterwards clears the error
    drop(page, "#reference-drop", DANCE.name, "video/mp4", DANCE.read_bytes()[:4096])
    assert "isn't a photo" in page.text_content("#reference-hint")
    drop(page, "#reference-drop", WOMAN_JPG.name, "image/jpeg", WOMAN_JPG.read_bytes())
    assert "invalid" not in page.get_attribute("#reference-drop", "class")
    assert page.text_content("#reference-hint").startswith("JPEG, PNG or WebP")


def test_a_file_the_server_refuses_shows_its_code_in_words(page, server: Cluster) -> None:
    text = b"these are my notes, not a photo\n" * 20
    with DANCE.open("rb") as video:  # the server's own answer for these bytes is the expectation
        direct = server.http.post(
            "/v1/jobs", files={"reference": ("photo.jpg", text), "driving": (DANCE.name, video)}
        )
    assert direct.status_code == 422
    code, raw = direct.json()["error"]["code"], direct.json()["error"]["message"]
    assert code == "unsupported_format"

    drop(page, "#reference-drop", "photo.jpg", "image/jpeg", text)  # the name passes the page's own check
    drop(page, "#driving-drop", DANCE.name, "video/mp4", DANCE.read_bytes())
    page.click("#go")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    shown = page.text_content("#error-text")
    assert shown == error_messages_in_page()[code]
    assert shown != raw and "_" not in shown and "JPEG" in shown  # words a person can act on
    assert code in page.text_content("#error-details")  # the code stays visible for support
    assert page.get_attribute("#error", "role") == "alert"


def test_a_job_that_fails_shows_why_in_words(page, server: Cluster) -> None:
    from PIL import Image

    # a photo with no person in it: a smooth sky-to-ground gradient, made here
    ramp = np.linspace(0, 1, 384, dtype=np.float32)[:, None, None]
    sky = (ramp * np.array([40, 120, 60]) + (1 - ramp) * np.array([120, 170, 230])).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(np.broadcast_to(sky, (384, 256, 3)).copy()).save(png, format="PNG")
    drop(page, "#reference-drop", "landscape.png", "image/png", png.getvalue())
    drop(page, "#driving-drop", DANCE.name, "video/mp4", DANCE.read_bytes())
    page.select_option("select[name=size]", "288x512")
    page.fill("input[name=max_frames]", "4")
    page.click("#go")
    page.wait_for_function("document.getElementById('job-id').textContent.length === 32")
    job_id = page.text_content("#job-id")
    page.wait_for_function("document.getElementById('status').dataset.status === 'failed'", timeout=120_000)
    error = server.http.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["code"] == "no_person_detected", error
    assert page.text_content("#error-text") == error_messages_in_page()["no_person_detected"]
    assert "No person was found in the photo" in page.text_content("#error-text")
    assert page.text_content("#status") == "Failed"
    assert page.locator("#cancel").is_hidden() and page.locator("#outcome").is_hidden()


def test_dropped_files_run_and_the_result_plays_in_step_beside_photo_and_video(
    page, server: Cluster, shots: Path
) -> None:
    drop(page, "#reference-drop", WOMAN_JPG.name, "image/jpeg", WOMAN_JPG.read_bytes())
    drop(page, "#driving-drop", DANCE.name, "video/mp4", DANCE.read_bytes())
    # previews before submitting: the photo decoded, the video's first frame (SOURCES.md: 1080x1920, 12 s)
    page.wait_for_function("document.getElementById('reference-preview').naturalWidth > 0")
    page.wait_for_function("document.getElementById('driving-preview').readyState >= 2", timeout=20_000)
    preview = page.evaluate(MEDIA_STATE, ["driving-preview"])["driving-preview"]
    assert (preview["width"], preview["height"]) == (1080, 1920) and abs(preview["duration"] - 12.0) < 0.1
    assert page.evaluate("document.getElementById('reference-preview').naturalWidth") == 1080
    assert "1080×1920" in page.text_content("#reference-name")
    assert "12.0 s" in page.text_content("#driving-name")

    page.check("input[name=engine][value=warp]")
    page.select_option("select[name=size]", "288x512")
    page.fill("input[name=max_frames]", "16")
    page.click("#go")
    page.wait_for_function("document.getElementById('job-id').textContent.length === 32")
    job_id = page.text_content("#job-id")
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["inputs"] == {"reference": WOMAN_JPG.name, "driving": DANCE.name}  # the drops reached the form
    assert job["options"]["engine"] == "warp" and job["options"]["max_frames"] == 16

    page.wait_for_selector("#outcome:not([hidden])", timeout=180_000)
    page.wait_for_function(
        "['result', 'driving-view'].every((id) => document.getElementById(id).readyState >= 2)",
        timeout=30_000,
    )
    page.wait_for_function(
        "[...document.querySelectorAll('#previews video')].every((v) => v.readyState >= 2)", timeout=30_000
    )

    # progress: stage names in user words, the bar moving, time left only once measured
    seen = page.evaluate("window.__seen")
    running = [s for s in seen if s["status"] == "running"]
    stage_words = set(page.evaluate("Object.values(window.animatePage.STAGE_WORDS)"))
    assert running and any(0 < s["bar"] < 1 for s in running), seen
    named = {s["stage"].split(" (")[0] for s in running if s["stage"] and s["stage"] != "Starting"}
    assert named and named <= stage_words, named
    start = running[0]["t"]
    assert all(s["t"] - start >= 3 for s in running if s["eta"]), running
    assert page.get_attribute("#stage", "aria-live") is None  # its paragraph is the live region
    assert page.get_attribute(".stage-line", "aria-live") == "polite"
    # the live region stays on screen when the job is done, so the outcome is announced
    assert (
        page.locator(".stage-line").is_visible() and page.text_content("#stage") == "Your animation is ready"
    )

    # the result, the driving video and the previews play in step; the result leads
    state = page.evaluate(MEDIA_STATE, ["result", "driving-view"])
    assert state["result"]["src"].endswith(f"/v1/jobs/{job_id}/video"), state
    assert (state["result"]["width"], state["result"]["height"]) == (288, 512)
    assert state["result"]["error"] is None
    page.wait_for_function(
        "!document.getElementById('result').paused && document.getElementById('result').currentTime > 0.1"
    )
    state = page.evaluate(MEDIA_STATE, ["result", "driving-view"])
    assert not state["driving-view"]["paused"], state
    page.evaluate("document.getElementById('result').pause()")
    page.wait_for_function("document.getElementById('driving-view').paused")
    ids = ["result", "driving-view", *[f"#previews figure:nth-child({i + 1}) video" for i in range(2)]]
    for target in (0.5, 0.2):
        page.evaluate(f"document.getElementById('result').currentTime = {target}")
        try:  # a seek in the 1080p driving video takes a moment on a busy machine
            page.wait_for_function(
                """([ids, target]) => ids.every((id) => {
                     const v = document.getElementById(id) || document.querySelector(id);
                     return v.paused && !v.seeking && Math.abs(v.currentTime - target) < 0.15; })""",
                arg=[ids, target],
                timeout=15_000,
            )
        except Exception:
            pytest.fail(f"not in step after a seek to {target}: {page.evaluate(MEDIA_STATE, ids)}")
    page.evaluate("document.getElementById('result').play()")
    # playing again, both move together (the result is 16 frames and loops: a moment past 0.25 s is looked for)
    page.wait_for_function(
        """(() => { const r = document.getElementById('result'), d = document.getElementById('driving-view');
           return !r.paused && !d.paused && r.currentTime > 0.25 && Math.abs(d.currentTime - r.currentTime) < 0.2; })()""",
        timeout=10_000,
    )

    titles = page.eval_on_selector_all("#previews video", "vs => vs.map(v => v.title)")
    assert {"skeleton", "motion"} <= set(titles) and "poses" not in titles, titles
    first = first_frame(server.http.get(f"/v1/jobs/{job_id}/artifacts/motion").content)
    assert (first.min(axis=2) < 200).mean() > 0.002, "the motion preview's first frame is blank"
    assert page.get_attribute("#download", "href") == f"/v1/jobs/{job_id}/video"
    assert page.get_attribute("#download", "download").endswith(".mp4")
    assert server.http.get(f"/v1/jobs/{job_id}/video").headers["content-type"] == "video/mp4"
    row = page.wait_for_selector(f"#recent tr[data-id='{job_id}']")
    assert "Done" in row.text_content()

    # desktop: photo, driving video and result side by side, left to right, on one row
    photo, driving, result = (box(page, f"#{n}-figure") for n in ("reference", "driving", "result"))
    assert abs(photo["y"] - driving["y"]) < 2 and abs(driving["y"] - result["y"]) < 2
    assert photo["x"] + photo["width"] <= driving["x"] and driving["x"] + driving["width"] <= result["x"]
    assert result["width"] > 250
    assert screenshot_spread(page, shots / "desktop.png") > 20

    # phone: one column, the result first, then the photo and the video; nothing wider than the screen
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    photo, driving, result = (box(page, f"#{n}-figure") for n in ("reference", "driving", "result"))
    assert result["y"] + result["height"] <= photo["y"] and photo["y"] + photo["height"] <= driving["y"]
    assert all(abs(b["x"] - photo["x"]) < 2 and b["width"] > 300 for b in (driving, result))
    drops = [box(page, f"#{n}-drop") for n in ("reference", "driving")]
    assert drops[0]["y"] + drops[0]["height"] <= drops[1]["y"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert screenshot_spread(page, shots / "phone.png") > 20

    # "Start over" puts the focus back on the first drop zone; the recent list opens the job again
    page.click("#again")
    assert (
        page.locator("#job").is_hidden() and page.evaluate("document.activeElement.id") == "reference-input"
    )
    page.click(f"#recent tr[data-id='{job_id}'] a")
    page.wait_for_selector("#outcome:not([hidden])")
    assert (
        page.evaluate("document.getElementById('result').getAttribute('src')") == f"/v1/jobs/{job_id}/video"
    )


def test_keyboard_only_submit_with_queue_position_and_cancel(page, server: Cluster) -> None:
    # the worker is busy with one job and another waits: ours is the second in line
    busy = [
        server.submit({"engine": "warp", "width": 288, "height": 512, "max_frames": 200}) for _ in range(2)
    ]
    server.wait(  # the first one runs (and will for a while): the line ahead of ours stays one job long
        lambda: server.http.get(f"/v1/jobs/{busy[0]['id']}").json()["status"] == "running", 60, "no job ran"
    )

    def tab_to(element_id: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    for kind, path in (("reference", WOMAN_JPG), ("driving", DANCE)):
        tab_to(f"{kind}-input")
        outline = page.eval_on_selector(f"#{kind}-drop", "z => getComputedStyle(z).outlineStyle")
        assert outline != "none"  # the focused drop zone shows it
        choose_with_keyboard(page, path)
    page.wait_for_function("document.getElementById('driving-preview').readyState >= 1", timeout=20_000)
    tab_to("go")  # engine (arrow keys), size and the rest stay as they are: auto picks warp here
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('job-id').textContent.length === 32")
    page.wait_for_function("document.getElementById('queue').textContent.includes('ahead')")
    job_id = page.text_content("#job-id")
    position = server.http.get(f"/v1/jobs/{job_id}").json()["queue_position"]
    ahead = page.text_content("#queue")
    assert position >= 1 and f"{position} job" in ahead, (position, ahead)
    assert page.text_content("#stage") == "Waiting for a free worker"

    tab_to("cancel")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').dataset.status === 'canceled'")
    assert server.http.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert page.text_content("#status") == "Canceled"
    for job in busy:
        server.http.post(f"/v1/jobs/{job['id']}/cancel")
    server.wait(
        lambda: all(server.http.get(f"/v1/jobs/{j['id']}").json()["status"] == "canceled" for j in busy),
        60,
        "the busy jobs were not canceled",
    )


def test_time_left_appears_once_measured_and_follows_the_measured_rate(page) -> None:
    # a job doing 5% per second, polled every 0.7 s: after t s at fraction t/20 there are 20 - t s left
    def left_after(seconds: float, start: float = 0.0) -> float | None:
        times = np.linspace(start, seconds, round((seconds - start) / 0.7) + 1).tolist()
        samples = [{"t": t, "f": t / 20} for t in times]
        return page.evaluate("(s) => window.animatePage.timeLeft(s)", samples)

    assert left_after(2.1) is None  # under 3 s of measurement
    assert left_after(7.0) == pytest.approx(13.0, abs=1e-6)
    assert left_after(14.0) == pytest.approx(6.0, abs=1e-6)
    assert left_after(14.0, start=10.0) == pytest.approx(6.0, abs=1e-6)  # joined late: same rate
    # a job that barely moved in 10 s (under 5% seen) gets no estimate rather than a wild one
    slow = [{"t": t, "f": 0.004 * t} for t in range(11)]
    assert page.evaluate("(s) => window.animatePage.timeLeft(s)", slow) is None
    words = {s: page.evaluate(f"window.animatePage.formatLeft({s})") for s in (4, 13, 61, 600)}
    assert words == {
        4: "a few seconds left",
        13: "about 15 s left",
        61: "about 65 s left",
        600: "about 10 min left",
    }


# ------------------------------------------------------------------------------------- every error code
_CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$|^[a-z]+$")
# Calls whose first string argument is an error code (ApiError's is its second argument, after the status).
_CODE_CALLS = {
    "ApiError",
    "AnimateError",
    "MediaError",
    "WeightsError",
    "PoseError",
    "Canceled",
    "_refuse",
    "error_body",
    "RateLimiter",
    "finish_unqueued",
}


# Packages no job or request reaches: the command line and training (their codes never meet the page).
CLI_ONLY = {"cli", "train"}


def server_error_codes() -> dict[str, str]:
    """Every error code in ``server/`` and ``animate/`` source (not ``animate/cli``, ``animate/train``), with where.

    Read from the syntax tree: arguments of the error constructors, ``code=``/``error_code=`` keywords,
    ``code = "..."`` assignments (class attributes, tuples), ``(status, "code", ...)`` tuples, plus the
    tables of HTTP and media codes.
    """
    from animate.media.errors import MEDIA_ERROR_CODES
    from server.errors import _HTTP_CODES

    found: dict[str, str] = {code: "server/errors.py" for code in (*_HTTP_CODES.values(), "http_error")}
    found.update({code: "animate/media/errors.py" for code in MEDIA_ERROR_CODES})

    def add(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _CODE.match(node.value):
            found.setdefault(node.value, where)

    for package in ("server", "animate"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if package == "animate" and path.relative_to(ROOT / package).parts[0] in CLI_ONLY:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    if name in _CODE_CALLS:
                        strings = [
                            a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                        ]
                        if strings:
                            add(strings[0], where)
                    for keyword in node.keywords:
                        if keyword.arg in ("code", "error_code"):
                            add(keyword.value, where)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id == "code":
                            add(node.value, where)
                        elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            for t, v in zip(target.elts, node.value.elts, strict=False):
                                if isinstance(t, ast.Name) and t.id == "code":
                                    add(v, where)
                if isinstance(node, ast.Tuple) and len(node.elts) >= 2:
                    status, code = node.elts[0], node.elts[1]
                    if (
                        isinstance(status, ast.Constant)
                        and isinstance(status.value, int)
                        and 400 <= status.value < 600
                    ):
                        add(code, where)
    return found


def test_every_error_code_the_server_knows_has_words_in_the_page() -> None:
    codes = server_error_codes()
    # the scan sees codes from every place they come from (so an empty scan cannot pass)
    assert {
        "worker_lost",  # store: keyword error_code=
        "disk_full",  # worker: tuple assignment
        "probe_failed",  # probe: AnimateError(code, message)
        "headers_too_large",  # protocol: _refuse(status, code, ...)
        "unsupported_transfer_encoding",  # protocol: (status, code, message) tuple
        "rate_limited",  # deps: class attribute
        "unauthorized",
        "canceled",
        "not_ready",
        "method_not_allowed",
    } <= set(codes)
    messages = error_messages_in_page()
    missing = {code: where for code, where in codes.items() if code not in messages}
    assert not missing, f"app.js ERROR_MESSAGES lacks words for: {missing}"
    for code, text in messages.items():
        assert text[0].isupper() and text.endswith((".", "!")) and "_" not in text, (code, text)


def test_a_code_the_page_does_not_know_still_shows_the_servers_message(page) -> None:
    human = page.evaluate("window.animatePage.humanError('brand_new_code', 'the server says why')")
    assert human == "the server says why"
    assert (
        page.evaluate("window.animatePage.humanError('too_long', 'x')")
        == error_messages_in_page()["too_long"]
    )


def test_static_files_are_served_with_their_types(server: Cluster) -> None:
    for path, kind in (
        ("/", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ):
        response = server.http.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path


# WCAG 2 contrast of each text against the first opaque background behind it.
CONTRAST = """
(selectors) => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  const behind = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const colour = rgb(getComputedStyle(e).backgroundColor);
      if (colour.length === 3 || colour[3] === 1) return colour.slice(0, 3);
    }
    return rgb(getComputedStyle(document.body).backgroundColor).slice(0, 3);
  };
  return Object.fromEntries(selectors.map((selector) => {
    const element = document.querySelector(selector);
    const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(behind(element))];
    return [selector, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  }));
}
"""
TEXTS = [
    "h1",
    ".lede",
    "#reference-hint",
    ".drop-call u",
    ".engine small",
    "label[data-engine=diffusion] .reason",
    "#go",
    ".options summary",
    ".recent th",
]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_has_enough_contrast_in_light_and_dark(
    browser, server: Cluster, shots: Path, scheme: str
) -> None:
    context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("label[data-engine=diffusion] .reason")
        ratios = page.evaluate(CONTRAST, TEXTS)
        assert all(ratio >= 4.5 for ratio in ratios.values()), ratios  # WCAG AA for body text
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(17, 19, 24)") is (scheme == "dark"), background
        assert screenshot_spread(page, shots / f"empty-{scheme}.png") > 10
    finally:
        context.close()
