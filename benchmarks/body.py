"""Body fitting and guidance rendering speed at the service's default 576x1024.

    .venv/bin/python benchmarks/body.py [--video ../shared/data/driving/dance_musepose.mp4] [--frames 96]
                                        [--device cpu|cuda]

Poses are estimated first (not timed; that is the pose stage). Then, timed: the driver's shape fit (once
per video), the per-frame pose fit (init + batched refinement), posing the mesh, and one ray cast per frame
giving depth, normal, semantic and mask images. Target on 2 CPU cores: fit + render >= 5 frames/s.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from animate.body import Renderer, load_anny
from animate.body.fit import FitOptions, ShapeOptions, fit_sequence, fit_shape
from animate.body.transfer import _pose_arrays, _shape_frames

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving" / "dance_musepose.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="576x1024")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))

    from animate.pose import SequenceOptions, estimate_video

    poses = estimate_video(
        args.video, max_frames=args.frames, options=SequenceOptions(max_side=512, keep_masks=True)
    )
    masks = np.stack([p.mask for p in poses])
    keypoints, world, detected = _pose_arrays(poses)
    n = len(poses)

    start = time.perf_counter()
    body = load_anny(args.device)
    load_s = time.perf_counter() - start
    renderer = Renderer(
        body.faces, body.vertex_parts, device="cuda:0" if args.device.startswith("cuda") else "cpu"
    )
    from animate.body.camera import Camera

    camera = Camera.default(poses.width, poses.height)
    out_camera = camera.cover(width, height)
    # Warm up kernels and caches outside the timings.
    fit_sequence(body, body.default_shape(), keypoints[:4], world[:4], camera, FitOptions(steps=2))
    renderer.render(
        body.pose(
            body.rest(body.tensor(body.default_shape())[None]),
            *(torch.zeros(1, 3), torch.zeros(1, len(body.joint_names), 3), torch.tensor([[0.0, 0.0, 3.0]])),
        ).vertices[0],
        out_camera,
    )

    start = time.perf_counter()
    idx = _shape_frames(detected, keypoints, ShapeOptions().max_frames)
    shape, _ = fit_shape(body, keypoints[idx], world[idx], camera, masks[idx])
    shape_s = time.perf_counter() - start

    start = time.perf_counter()
    track = fit_sequence(body, shape, keypoints, world, camera, FitOptions(), fps=poses.fps)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    vertices = track.vertices(body)
    mesh_s = time.perf_counter() - start

    start = time.perf_counter()
    for t in range(n):
        frame = renderer.render(vertices[t], out_camera)
        frame.depth_image, frame.normal_image, frame.semantic_image, frame.mask_image  # noqa: B018
    render_s = time.perf_counter() - start

    total = shape_s + fit_s + mesh_s + render_s
    rows = [
        ("model load (once per process)", load_s, None),
        (f"driver shape fit (once, {len(idx)} frames)", shape_s, n / shape_s),
        ("pose fit (init + refinement)", fit_s, n / fit_s),
        ("mesh posing", mesh_s, n / mesh_s),
        (f"render depth/normal/semantic/mask {width}x{height}", render_s, n / render_s),
        ("fit + render, per-video total", total, n / total),
        ("fit + render, per frame (shape fit excluded)", total - shape_s, n / (total - shape_s)),
    ]
    print(
        f"body benchmark: {n} frames of {args.video.name}, device {args.device}, {os.cpu_count()} cpus, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'stage':55s} {'seconds':>8s} {'frames/s':>9s}")
    for name, seconds, fps in rows:
        print(f"{name:55s} {seconds:8.2f} {'' if fps is None else f'{fps:9.1f}'}")


if __name__ == "__main__":
    main()
