"""The identity score where users look, and what it costs.

1. The warp engine animates the shared photo (woman_street) with the shared dance; the output's identity
   score against the photo (every k-th frame), next to the same output frames scored against held-out
   faces: the talking-head video's person and the dancer herself (the driving video's first frame).
   Expectation: the reference scores highest (the warp engine moves the photo's own pixels).
2. The cost of the score per sampled frame (detect + embed) at the output size.
3. Plumbing of the identity adapter on the tiny random pipeline (CPU, 2 steps): a fresh adapter leaves the
   frames exactly unchanged, a re-initialised one changes them, scale 0 equals no adapter; seconds per call.

    .venv/bin/python benchmarks/identity.py --frames 48 --every 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def first_face_embedding(path: Path, embedder, skip: int = 0):
    from animate.face import detect_face

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index < skip:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            face = detect_face(rgb, points=embedder.points)
            if face is not None:
                return embedder.embed(rgb, face)
    raise SystemExit(f"no face in {path}")


def warp_scores(frames: int, every: int, size: str) -> list[tuple[str, str]]:
    from animate.animator import AnimationOptions, Animator
    from animate.face import IdentityMeter, load_embedder, reference_embedding
    from animate.media import open_video

    reference = DATA / "reference" / "woman_street_mimicmotion.jpg"
    driving = DATA / "driving" / "dance_musepose.mp4"
    width, height = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = Animator().run(
            reference,
            driving,
            Path(tmp) / "out.mp4",
            AnimationOptions(engine="warp", size=(width, height), max_frames=frames, audio=False),
        )
        run_seconds = time.perf_counter() - start
        embedder = load_embedder(None)
        others = {
            "reference (woman_street)": reference_embedding(
                np.asarray(Image.open(reference).convert("RGB")), embedder
            ),
            "held out: talking head": first_face_embedding(
                DATA / "driving" / "talking_head_animateanyone.mp4", embedder, 40
            ),
            "held out: the dancer": first_face_embedding(driving, embedder),
        }
        meters = {name: IdentityMeter(emb, embedder, every) for name, emb in others.items()}
        seconds = 0.0
        for frame in open_video(Path(tmp) / "out.mp4").frames():
            tick = time.perf_counter()
            for meter in meters.values():
                meter.update(frame)
            seconds += time.perf_counter() - tick
    rows = [("run identity (AnimationResult)", str(result.identity)), ("warp run, s", f"{run_seconds:.1f}")]
    for name, meter in meters.items():
        score = meter.result()
        rows.append(
            (
                f"output vs {name}",
                f"mean {score.mean:.3f}  min {score.min:.3f}  faces {score.face_share:.0%} of {score.frames}",
            )
        )
    sampled = max(1, meters["reference (woman_street)"].sampled)
    rows.append(
        (f"score cost per sampled frame at {size} (3 meters), s", f"{seconds / sampled / len(meters):.3f}")
    )
    return rows


def adapter_plumbing() -> list[tuple[str, str]]:
    import torch

    from controlnets import IdentityAdapter
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    torch.set_num_threads(1)
    components = tiny_components(with_guidance_encoders=False)
    torch.manual_seed(5)
    adapter = IdentityAdapter.for_unet(components["unet"], embedding_dim=128, num_tokens=4).eval()
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)

    def call(**kwargs) -> tuple[torch.Tensor, float]:
        inputs = {
            "image": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
            "pose_images": torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            "height": 32,
            "width": 32,
            "num_inference_steps": 2,
            "generator": torch.Generator().manual_seed(0),
            "output_type": "pt",
            "max_guidance_scale": 2.5,
            "face_embedding": torch.randn(128, generator=torch.Generator().manual_seed(2)),
        }
        inputs.update(kwargs)
        tick = time.perf_counter()
        frames = pipe(**inputs).frames
        return frames, time.perf_counter() - tick

    plain, t_plain = call()
    pipe.register_modules(identity_adapter=adapter)
    fresh, t_fresh = call()
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(6))
    changed, t_changed = call()
    off, _ = call(identity_scale=0.0)
    return [
        ("tiny pipeline, no adapter, s", f"{t_plain:.2f}"),
        ("fresh adapter == no adapter (exact)", str(torch.equal(fresh, plain))),
        ("re-initialised adapter: mean |change|", f"{(changed - plain).abs().mean().item():.4f}"),
        ("identity_scale=0 == no adapter (exact)", str(torch.equal(off, plain))),
        ("tiny pipeline with adapter, s", f"{t_changed:.2f} (fresh {t_fresh:.2f})"),
        ("adapter parameters (tiny UNet, 4 tokens)", f"{sum(p.numel() for p in adapter.parameters()):,}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--size", default="576x1024")
    args = parser.parse_args()
    rows = warp_scores(args.frames, args.every, args.size) + adapter_plumbing()
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
