"""Body fitting and guidance rendering speed at the service's default 576x1024, every per-video cost counted.

    .venv/bin/python benchmarks/body.py [--video ../shared/data/driving/dance_musepose.mp4]
        [--reference ../shared/data/reference/woman_street_mimicmotion.jpg] [--frames 96] [--repeats 3]
        [--device cpu|cuda] [--size 576x1024]

Poses are estimated first (not timed; that is the pose stage). Then, timed, ``--repeats`` times: the
reference fit (shape + pose + camera), the driver's shape fit, the per-frame pose fit (closed-form init +
warm-started chunked refinement), posing the mesh on the reference's shape (shape transfer), and one
rasterisation per frame giving the depth, normal, semantic and mask images. The table shows the run with
the best per-video total, and the machine's load average (the CPUs may be shared).
Target on 2 CPU cores: fit + render >= 5 frames/s for a video.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from animate.body import Renderer, load_anny
from animate.body.camera import Camera
from animate.body.fit import FitOptions, ShapeOptions, fit_sequence, fit_shape
from animate.body.transfer import _fill_missing, _pose_arrays, _shape_frames, fit_reference, transfer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_VIDEO = DATA / "driving" / "dance_musepose.mp4"
DEFAULT_REFERENCE = DATA / "reference" / "woman_street_mimicmotion.jpg"


def _render_all(renderer: Renderer, vertices: torch.Tensor, camera: Camera) -> None:
    for t in range(len(vertices)):
        frame = renderer.render(vertices[t], camera)
        frame.depth_image, frame.normal_image, frame.semantic_image, frame.mask_image  # noqa: B018


def _sequential(body, renderer, ref, drv, out_size) -> dict[str, float]:
    """Each stage after the other; seconds per stage."""
    ref_pose, ref_w, ref_h = ref
    poses, masks, keypoints, world, detected, camera = drv
    times = {}
    start = time.perf_counter()
    ref_track = fit_reference(body, ref_pose, ref_w, ref_h, ref_pose.mask)
    times["reference fit"] = time.perf_counter() - start

    start = time.perf_counter()
    idx = _shape_frames(detected, keypoints, ShapeOptions().max_frames)
    shape, _ = fit_shape(body, keypoints[idx], world[idx], camera, masks[idx])
    times["driver shape fit"] = time.perf_counter() - start

    start = time.perf_counter()
    track = fit_sequence(body, shape, keypoints, world, camera, FitOptions(), fps=poses.fps, valid=detected)
    times["pose fit"] = time.perf_counter() - start

    start = time.perf_counter()
    out_camera = ref_track.camera.cover(*out_size)
    moved = transfer(body, track, ref_track, camera=out_camera)
    vertices = moved.vertices(body)
    times["transfer + mesh posing"] = time.perf_counter() - start

    start = time.perf_counter()
    _render_all(renderer, vertices, out_camera)
    times["render"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="576x1024")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out_size = tuple(map(int, args.size.split("x")))

    from animate.media import load_image
    from animate.pose import SequenceOptions, estimate_image, estimate_video

    image = load_image(args.reference)
    ref_pose = estimate_image(image)
    ref = (ref_pose, image.rgb.shape[1], image.rgb.shape[0])
    poses = estimate_video(
        args.video, max_frames=args.frames, options=SequenceOptions(max_side=512, keep_masks=True)
    )
    masks = np.stack([p.mask for p in poses])
    keypoints, world, detected = _pose_arrays(poses)
    world = _fill_missing(world, detected)
    camera = Camera.default(poses.width, poses.height)
    drv = (poses, masks, keypoints, world, detected, camera)
    n = len(poses)

    start = time.perf_counter()
    body = load_anny(args.device)
    load_s = time.perf_counter() - start
    renderer = Renderer(body.faces, body.vertex_parts, device=args.device)
    # Warm up kernels and caches outside the timings.
    fit_sequence(body, body.default_shape(), keypoints[:4], world[:4], camera, FitOptions(steps=2))
    rest = body.rest(body.tensor(body.default_shape())[None])
    zeros = torch.zeros(1, 3)
    posed = body.pose(rest, zeros, torch.zeros(1, len(body.joint_names), 3), torch.tensor([[0.0, 0.0, 3.0]]))
    renderer.render(posed.vertices[0], Camera.default(*out_size))

    runs = []
    for _ in range(args.repeats):
        runs.append(_sequential(body, renderer, ref, drv, out_size))
    best = min(runs, key=lambda r: sum(r.values()))
    totals = [sum(r.values()) for r in runs]

    per_video = ("reference fit", "driver shape fit")
    print(
        f"body benchmark: {n} frames of {args.video.name}, reference {args.reference.name}, "
        f"{out_size[0]}x{out_size[1]}, device {args.device}, {os.cpu_count()} cpus, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(f"model load (once per process, not counted): {load_s:.2f} s")
    heading = f"stage (best of {args.repeats} runs)"
    print(f"{heading:45s} {'seconds':>8s} {'frames/s':>9s}")
    for name, seconds in best.items():
        kind = " (once per video)" if name in per_video else ""
        print(f"{name + kind:45s} {seconds:8.2f} {n / seconds:9.1f}")
    total = sum(best.values())
    print(f"{'fit + render, per-video total':45s} {total:8.2f} {n / total:9.1f}")
    print(f"per-video totals of the {len(totals)} runs: {', '.join(f'{t:.2f}' for t in totals)} s")


if __name__ == "__main__":
    main()
