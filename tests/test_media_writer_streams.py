"""What the writer puts in the file (x264 settings, the audio track's format) and how VideoWriters stops."""

from __future__ import annotations

import re
import time

import av
import numpy as np
from _media import make_video

from animate.media import write_video
from animate.media.writer import VideoWriters

FRAMES = [np.full((32, 48, 3), 30 * i, np.uint8) for i in range(4)]


def x264_settings(path) -> dict[str, str]:
    """The encoder settings x264 records in the stream (its SEI user data): crf, subme, ..."""
    text = re.search(rb"options: ([^\x00]*)", path.read_bytes()).group(1).decode()
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def test_video_writers_pass_crf_and_preset_to_x264(tmp_path):
    with VideoWriters(tmp_path, ("default", "other"), 12.0) as writers:
        for frame in FRAMES:
            writers.put({"default": frame, "other": frame})
    with VideoWriters(tmp_path / "fast", ("fast",), 12.0, crf=30, preset="ultrafast") as writers:
        for frame in FRAMES:
            writers.put({"fast": frame})
    default, fast = x264_settings(tmp_path / "default.mp4"), x264_settings(tmp_path / "fast" / "fast.mp4")
    # x264's medium preset searches sub-pixels at level 7 and ultrafast at 0.
    assert (default["crf"], default["subme"]) == ("18.0", "7")
    assert (fast["crf"], fast["subme"]) == ("30.0", "0")


def test_writer_threads_are_named_daemons(tmp_path):
    writers = VideoWriters(tmp_path, ("a", "b"), 12.0)
    assert [(t.name, t.daemon) for t in writers.threads] == [("writer-a", True), ("writer-b", True)]
    writers.abort()


def test_abort_before_or_after_frames_leaves_no_file(tmp_path):
    writers = VideoWriters(tmp_path / "none", ("a",), 12.0)
    writers.abort()  # nothing was put: the wake-up value must not become a video
    writers = VideoWriters(tmp_path / "some", ("a",), 12.0)
    writers.put({"a": FRAMES[0]})
    writers.put({"a": FRAMES[1]})
    deadline = time.monotonic() + 30
    while not writers.queues["a"].empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the writer has taken both frames and waits for the next one
    writers.abort()
    assert list((tmp_path / "none").iterdir()) == [] and list((tmp_path / "some").iterdir()) == []


def test_copied_audio_is_48khz_stereo_aac(tmp_path):
    source = make_video(tmp_path / "mono.mp4", n_frames=10, fps=10, audio_seconds=1.0)  # mono
    out = write_video(tmp_path / "out.mp4", FRAMES * 3, 12.0, audio_from=source)
    with av.open(str(out.path)) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.rate, audio.channels) == ("aac", 48_000, 2)
        assert 100_000 < audio.codec_context.bit_rate < 160_000  # 128 kb/s nominal


def test_audio_shorter_than_the_video_ends_with_its_source(tmp_path):
    source = make_video(tmp_path / "short.mp4", n_frames=5, fps=10, audio_seconds=0.5)
    out = write_video(tmp_path / "out.mp4", FRAMES * 6, 12.0, audio_from=source)  # 2 s of video
    with av.open(str(out.path)) as container:
        audio = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.rate
    assert out.frame_count == 24 and abs(seconds - 0.5) < 0.05


def _wav(path, seconds: float, rate: int = 44_100):
    """A mono 16-bit PCM WAV with a 440 Hz tone: not AAC's planar float, not 48 kHz."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(round(seconds * rate))
        data = (np.sin(2 * np.pi * 440 * t / rate) * 10_000).astype(np.int16)[None]
        for start in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, start : start + 1024]), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_pcm_audio_at_44k1_is_converted_and_trimmed_to_the_exact_sample(tmp_path):
    source = _wav(tmp_path / "tone.wav", 3.0)
    out = write_video(tmp_path / "out.mp4", FRAMES * 6, 12.0, audio_from=source, preset="ultrafast")  # 2 s
    assert out.has_audio
    with av.open(str(out.path)) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.rate, audio.channels) == ("aac", 48_000, 2)
        assert audio.duration * audio.time_base == 2  # exactly 96 000 samples at 48 kHz
        decoded = [frame.to_ndarray() for frame in container.decode(audio)]
    samples = sum(d.shape[1] for d in decoded)
    assert samples == -(-96_000 // 1024) * 1024  # AAC codes whole 1024-sample frames
    tone = np.concatenate(decoded, axis=1)[0, 4_800:90_000]
    assert 0.2 < np.abs(tone).max() < 0.4  # 10 000 / 32 768 = 0.31: the tone, not silence or noise
