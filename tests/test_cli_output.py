"""What a person sees in the terminal: only our lines, one readable line per stage, errors with their code.

The installed ``animate`` console script runs in real processes on the shared sample media (a few frames at
a small size). Every line it prints must have one of our shapes (``OURS``); third-party chatter (MediaPipe's
absl/TFLite lines, Warp's missing-CUDA warning, transformers' notices) shows only with ``ANIMATE_DEBUG=1`` or
``-v``. In a terminal (a real pseudo-terminal) the running stage is redrawn in place and ends as the same
line a log gets. Expectations come from outside the code under test: the frame count asked for, the wall
time measured around the process, the shapes of the third-party lines as those libraries print them, the
accepted containers opened by the real decoder, a weights folder laid out by hand.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _media import make_video
from conftest import DANCE, WOMAN_JPG

from animate.body import cache
from animate.cli import run
from animate.cli.progress import StageProgress, format_seconds, time_left
from animate.media import open_video

ANIMATE = Path(sys.executable).with_name("animate")
TIME = r"(\d+\.\d s|\d+:\d\d(:\d\d)?)"
STAGE = rf"(start-up|decode|pose|body|motion|render|encode|transcode) +(\d+ frames)? +{TIME}"
#: Every line our commands print, and nothing else.
OURS = [
    re.compile(STAGE),
    re.compile(r"wrote \S+ \(\d+x\d+, \d+ frames, [\d.]+ fps(, (warp|diffusion))?\)"),
    re.compile(r"wrote \S+ \(\d+ frames, person in \d+, \d+x\d+\)"),
    re.compile(r" {2}note: .+"),
    re.compile(r"note: first use of the body model on this machine: .+"),
    re.compile(r"warning: .+"),
    re.compile(r"error: .+ \[[a-z_]+\]"),
    re.compile(r"Try 'animate[\w -]*--help' for help\."),
]
#: How the third-party libraries word their lines (MediaPipe/absl, TFLite, Warp, transformers).
THEIRS = re.compile(
    r"^([IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]|INFO: Created TensorFlow Lite|WARNING: All log messages before absl"
    r"|Warp CUDA warning|\[transformers\])"
)
SMALL_RUN = ["--max-frames", "4", "--size", "144x256"]


def animate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ANIMATE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def foreign(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not any(p.fullmatch(line) for p in OURS)]


def stage_lines(text: str) -> dict[str, tuple[int | None, float]]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(STAGE, line)
        if match:
            count = int(match[2].split()[0]) if match[2] else None
            found[match[1]] = (count, seconds(match[3]))
    return found


def seconds(text: str) -> float:
    if text.endswith(" s"):
        return float(text[:-2])
    value = 0.0
    for part in text.split(":"):
        value = value * 60 + int(part)
    return value


def without_env(*names: str) -> dict[str, str]:
    return {name: "" for name in names}


# ------------------------------------------------------------------------------------- real processes
def test_run_prints_only_our_lines_and_one_line_per_stage(tmp_path, data_dir):
    out = tmp_path / "out.mp4"
    start = time.monotonic()
    proc = animate(
        "run", str(WOMAN_JPG), str(DANCE), "-o", str(out), *SMALL_RUN, env=without_env("ANIMATE_DEBUG")
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert foreign(proc.stdout + proc.stderr) == []
    lines = proc.stdout.splitlines()
    assert lines[0] == f"wrote {out} (144x256, 4 frames, 24 fps, warp)"
    assert all(line.startswith("  note: ") for line in lines[1:])  # e.g. the identity score's
    stages = stage_lines(proc.stderr)
    assert list(stages) == ["start-up", "decode", "pose", "body", "motion", "render", "encode"]
    assert stages["pose"][0] == 4 and stages["render"][0] == 4  # the frames asked for
    # start-up (interpreter, imports) is its own line: decode is the inputs' check alone, well below it
    assert stages["start-up"][1] > 0 and stages["decode"][1] < stages["start-up"][1]
    assert sum(s for _, s in stages.values()) <= wall + 0.1 * len(stages)  # rounding to 0.1 s per line
    assert open_video(out).info.frame_count == 4


def test_debug_and_verbose_show_the_third_party_lines(tmp_path, data_dir):
    """(Without them, ``animate run`` above prints none.)"""
    poses = tmp_path / "poses.json"
    for args, env in (((), {"ANIMATE_DEBUG": "1"}), (("-v",), {"ANIMATE_DEBUG": ""})):
        loud = animate("pose", str(WOMAN_JPG), "-o", str(poses), *args, env=env)
        assert loud.returncode == 0, loud.stderr
        theirs = [line for line in loud.stderr.splitlines() if THEIRS.match(line)]
        assert theirs, loud.stderr  # MediaPipe's graph start speaks on stderr
        assert "wrote" in loud.stdout


@pytest.mark.slow  # two imports of diffusers + transformers
def test_weights_check_is_quiet_where_checking_a_file_loads_transformers(tmp_path):
    (tmp_path / "DisPose.pth").write_bytes(b"not a checkpoint")  # checking it imports pipelines/transformers
    quiet = animate("weights", "check", "--dir", str(tmp_path), env=without_env("ANIMATE_DEBUG"))
    assert quiet.returncode == 0 and "DisPose.pth" in quiet.stdout
    assert not any(THEIRS.match(line) for line in (quiet.stdout + quiet.stderr).splitlines()), quiet.stderr
    loud = animate("weights", "check", "--dir", str(tmp_path), env={"ANIMATE_DEBUG": "1"})
    assert any(line.startswith("[transformers]") for line in loud.stderr.splitlines()), loud.stderr


def read_pty(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``animate`` with stdout and stderr on a pseudo-terminal; its exit code and everything shown."""
    main, secondary = pty.openpty()
    env = {**os.environ, "ANIMATE_DEBUG": "", "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen([str(ANIMATE), *args], stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def screen(raw: str) -> list[str]:
    """The lines left on a terminal: each line's text after its last carriage return / erase."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        visible = re.split(r"\r(?:\x1b\[K)?", line)[-1]
        if visible:
            lines.append(visible)
    return lines


def test_in_a_terminal_the_stage_is_redrawn_in_place_and_ends_as_its_line(tmp_path, data_dir):
    """MediaPipe's graph speaks on stderr while the bar is drawn: none of it may reach the terminal."""
    out = tmp_path / "poses.json"
    code, raw = read_pty(
        ["pose", str(DANCE), "-o", str(out), "--max-frames", "6", "--render", str(tmp_path / "s.mp4")]
    )
    assert code == 0, raw
    shown = screen(raw)
    assert foreign("\n".join(shown)) == []
    assert list(stage_lines("\n".join(shown))) == ["start-up", "pose", "render"]
    assert stage_lines("\n".join(shown))["pose"][0] == 6
    redraws = re.findall(r"\r\x1b\[K(\w+) +\[[#-]{20}\] +\d+%", raw)
    assert {"pose", "render"} <= set(redraws)  # the live bar was drawn for both stages
    assert not any(THEIRS.match(part) for part in re.split(r"[\r\n]+(?:\x1b\[K)?", raw))


# ---------------------------------------------------------------------------------------- the progress
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_each_stage_prints_one_line_with_its_count_and_time():
    clock, stream = Clock(), io.StringIO()
    progress = StageProgress(stream, clock=clock, started=97.5)
    progress("decode", 0, 1)
    clock.now += 0.25
    progress("decode", 1, 1)
    progress("pose", 0, 96)
    for i in range(1, 97):
        clock.now += 0.05
        progress("pose", i, 96)
    progress("body", 0, 1)
    clock.now += 75.0
    progress.close()
    assert stream.getvalue().splitlines() == [
        "start-up                 2.5 s",
        "decode                   0.2 s",  # 0.25 rounds to even
        "pose        96 frames    4.8 s",
        "body" + " " * 22 + "1:15",
    ]


def test_time_left_comes_from_the_stage_rate_and_only_once_it_means_something():
    assert time_left(elapsed=4.0, done=20, total=100) == pytest.approx(16.0)  # 0.2 s a frame, 80 left
    assert time_left(elapsed=1.9, done=50, total=100) is None  # too early
    assert time_left(elapsed=30.0, done=5, total=100) is None  # under 10 % of the stage
    assert time_left(elapsed=5.0, done=0, total=100) is None
    clock, term = Clock(), Terminal()
    progress = StageProgress(term, clock=clock, started=clock.now)
    progress("pose", 0, 100)
    clock.now += 1.0
    progress("pose", 50, 100)
    assert "left" not in term.getvalue()  # 1 s into the stage: no guess
    clock.now += 3.0
    progress("pose", 80, 100)  # 4 s for 80 frames: 20 left at 0.05 s
    last = term.getvalue().rsplit("\r\x1b[K", 1)[-1]
    assert last == "pose     [################----]  80% 80/100 4.0 s ~1.0 s left"
    progress.close()
    assert screen(term.getvalue()) == ["start-up                 0.0 s", "pose       100 frames    4.0 s"]


def test_format_seconds():
    assert [format_seconds(s) for s in (0.04, 9.96, 59.9, 60, 75.4, 3725)] == [
        "0.0 s", "10.0 s", "59.9 s", "1:00", "1:15", "1:02:05",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------- errors
def test_usage_errors_carry_our_code_and_json_errors_go_to_stdout(tmp_path, capsys):
    out = str(tmp_path / "x.mp4")
    assert run(["run", str(WOMAN_JPG), str(DANCE), "-o", out, "--max-frames", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(
        r"error: Invalid value for '--max-frames': .*1 \[invalid_option\]\nTry 'animate run --help' for help\.\n",
        captured.err,
    ), captured.err
    assert run(["run", str(WOMAN_JPG), str(DANCE), "-o", out, "--max-frames", "0", "--json"]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)["error"]
    assert error["code"] == "invalid_option" and "--max-frames" in error["message"]
    assert captured.err == ""
    for argv, code in (
        (["run", str(WOMAN_JPG)], "missing_argument"),
        (["run", str(WOMAN_JPG), str(DANCE), "-o", out, "--no-such-option"], "unknown_option"),
        (["weights", "check", "--bogus"], "unknown_option"),
    ):
        assert run(argv) == 2
        assert f"[{code}]" in capsys.readouterr().err, argv
    assert run(["media", "probe", str(tmp_path / "gone.mp4"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": {"code": "not_found", "message": f"no such file: {tmp_path / 'gone.mp4'}"}
    }


def test_an_internal_error_is_our_line_with_its_code_and_json_too(monkeypatch, capsys):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("ANIMATE_DEBUG", raising=False)
    monkeypatch.setattr("animate.cli.doctor.collect", broken)
    assert run(["doctor"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "error: internal error: RuntimeError: boom (set ANIMATE_DEBUG=1 for a traceback) [internal_error]\n"
    )
    assert run(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "internal_error"


def test_a_photo_as_the_driving_video_is_refused_in_user_words_naming_what_opens(tmp_path, capsys):
    assert run(["run", str(WOMAN_JPG), str(WOMAN_JPG), "-o", str(tmp_path / "x.mp4"), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "unsupported_format"
    assert error["message"] == (
        f"{WOMAN_JPG.name} is a still image, not a video; send MP4, MOV, MKV, WebM or AVI"
    )
    # every container the message names opens (README promises MP4/MOV, MKV/WebM and AVI)
    for suffix, container, codec in (
        ("mp4", "mp4", "libx264"), ("mov", "mov", "libx264"), ("mkv", "matroska", "libx264"),
        ("webm", "webm", "libvpx-vp9"), ("avi", "avi", "mpeg4"),
    ):  # fmt: skip
        clip = make_video(tmp_path / f"clip.{suffix}", n_frames=3, container=container, codec=codec)
        assert open_video(clip).info.frame_count == 3, suffix


def test_the_console_script_in_json_mode_prints_one_json_error(tmp_path):
    proc = animate(
        "run", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "x.mp4"), "--max-frames", "0", "--json"
    )
    assert proc.returncode == 2 and proc.stderr == ""
    assert json.loads(proc.stdout)["error"]["code"] == "invalid_option"


# ---------------------------------------------------------------------------- doctor, weights, body data
def test_doctor_counts_only_weight_files(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "README.md").write_text("where the weights go\n")
    (weights / ".gitkeep").write_text("")
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(weights))
    assert run(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] | {"dir": None} == {
        "dir": None, "exists": True, "files": 0, "bytes": 0,
    }  # fmt: skip
    assert run(["doctor"]) == 0
    assert "no weight files" in capsys.readouterr().out
    (weights / "dwpose").mkdir()
    (weights / "dwpose" / "yolox_l.onnx").write_bytes(b"\0" * 1234)
    assert run(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["weights"]["files"], report["weights"]["bytes"]) == (1, 1234)


def test_weights_check_speaks_user_words(tmp_path, capsys):
    assert run(["weights", "check", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "issue" not in out
    after = out.split("features:\n", 1)[1]
    features = [line for line in after.splitlines() if line.startswith("  ")]
    assert len(features) >= 10
    for line in features + [line for line in after.splitlines() if not line.startswith("  ")]:
        assert "_" not in line, line  # no identifiers such as guidance_depth, fast_load or dlib_resnet_v1
    assert "`animate run` uses the CPU warp engine" in after  # what a machine without weights can do


def test_body_model_data_is_known_built_only_with_every_cached_file(tmp_path, monkeypatch):
    from anny.models.model_data import CURRENT_DATA_VERSION

    assert cache.data_version() == CURRENT_DATA_VERSION  # read without importing anny, as anny has it
    monkeypatch.setenv("ANNY_CACHE_DIR", str(tmp_path))
    assert cache.cache_dir() == tmp_path / f"v{CURRENT_DATA_VERSION}" and not cache.is_built()
    folder = tmp_path / f"v{CURRENT_DATA_VERSION}"
    folder.mkdir()
    names = ["load_data_0a1b", "build_model_data_2c3d", "build_compact_model_data_4e5f"]
    for name in names[:2]:
        (folder / f"{name}.safetensors").write_bytes(b"x")
    assert not cache.is_built()
    (folder / f"{names[2]}.safetensors").write_bytes(b"x")
    assert cache.is_built()
    (tmp_path / f"v{CURRENT_DATA_VERSION + 1}").mkdir()  # another version's folder changes nothing
    assert cache.is_built()


def test_a_run_that_must_build_the_body_data_says_so_on_its_own_line(tmp_path):
    # A photo as the driving video fails at decode, before any body work: the line shows, nothing is built.
    proc = animate(
        "run",
        str(WOMAN_JPG),
        str(WOMAN_JPG),
        "-o",
        str(tmp_path / "x.mp4"),
        env={"ANNY_CACHE_DIR": str(tmp_path)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(
        f"note: first use of the body model on this machine: building its data in {tmp_path}"
    )
    assert lines[-1].endswith("[unsupported_format]") and foreign(proc.stderr) == []
    assert not any(tmp_path.rglob("*.safetensors"))


# ------------------------------------------------------------------------------------------ the server
@pytest.mark.slow
def test_a_server_job_leaves_no_third_party_lines_in_the_log(tmp_path, data_dir):
    """``animate serve``'s worker runs the whole job (pose, body, previews, render): its log holds only our
    lines (timestamped log records), none of MediaPipe's, TFLite's or Warp's."""
    from test_server_e2e import FINISHED, SHORT, Cluster

    cluster = Cluster(tmp_path, env={"ANIMATE_DEBUG": "", "ANIMATE_WEIGHTS_DIR": str(tmp_path / "none")})
    try:
        cluster.start_api(workers=1)
        job = cluster.submit({**SHORT, "max_frames": 4})
        done = cluster.wait_for(job["id"], lambda j: j["status"] in FINISHED, timeout=240)
        assert done["status"] == "succeeded", done
        assert "skeleton" in done["urls"]["artifacts"]  # the job went through the previews too
    finally:
        cluster.stop()
    log = cluster.logs()
    assert [line for line in log.splitlines() if THEIRS.match(line)] == []
    assert "Uvicorn running" in log or "Application startup complete" in log  # the log was captured
