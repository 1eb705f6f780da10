from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _media import make_video
from conftest import DANCE

from animate import __version__
from animate.cli import run
from animate.media import open_video

ANIMATE = Path(sys.executable).with_name("animate")


def test_version(capsys):
    assert run(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_doctor_json(capsys):
    assert run(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"]["version"].startswith("2.")
    assert report["ffmpeg"]["h264_encoder"] is True
    assert report["packages"]["mediapipe"] == "0.10.21"
    assert set(report["weights"]) >= {"dir", "exists", "files"}


def test_probe_json(capsys, data_dir):
    assert run(["media", "probe", str(DANCE), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["width"] == 1080 and facts["height"] == 1920 and facts["frame_count"] == 288


def test_transcode(tmp_path, capsys):
    source = make_video(tmp_path / "in.mp4", n_frames=20, width=96, height=64, fps=10)
    out = tmp_path / "out.mp4"
    assert (
        run(
            [
                "media",
                "transcode",
                str(source),
                str(out),
                "--fps",
                "5",
                "--size",
                "48x48",
                "--max-frames",
                "8",
            ]
        )
        == 0
    )
    info = open_video(out).info
    assert (info.width, info.height, info.frame_count, info.fps) == (48, 48, 8, 5.0)


def test_bad_input_exit_code_2(tmp_path, capsys):
    text = tmp_path / "x.mp4"
    text.write_text("hello")
    assert run(["media", "probe", str(text)]) == 2
    err = capsys.readouterr().err
    assert "[unsupported_format]" in err and "Traceback" not in err
    assert run(["media", "transcode", str(text), str(tmp_path / "o.mp4"), "--size", "big"]) == 2
    assert "[invalid_option]" in capsys.readouterr().err
    assert run(["media", "probe"]) == 2  # usage error


def test_console_script_real_process(tmp_path):
    """The installed entry point: bad input -> message with code on stderr, exit 2, no traceback."""
    missing = tmp_path / "missing.mp4"
    proc = subprocess.run([str(ANIMATE), "media", "probe", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "[not_found]" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(ANIMATE), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout
