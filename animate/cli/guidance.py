"""``animate guidance``: the 3D body guidance of a reference + driving pair, as videos and JSON.

Writes into DIR: ``skeleton.mp4`` (driving poses retargeted to the reference), ``depth.mp4``,
``normal.mp4``, ``semantic.mp4``, ``mask.mp4`` (the reference's body doing the driving motion),
``overlay.mp4`` (the driver's fitted body blended over the driving frames, to check the fit by eye),
``poses.json`` (driving keypoints) and ``body.json`` (fitted parameters per frame), all at the output size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from animate.errors import AnimateError
from animate.media import VideoWriters

DEFAULT_SIZE = (576, 1024)
MAPS = ("skeleton", "depth", "normal", "semantic", "mask", "overlay")


def parse_size(text: str | None, reference_wh: tuple[int, int]) -> tuple[int, int]:
    """``WxH`` -> (w, h); the default is 576x1024 in the reference's orientation."""
    if not text:
        w, h = DEFAULT_SIZE
        return (h, w) if reference_wh[0] > reference_wh[1] else (w, h)
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AnimateError("bad_size", f"--size must look like 576x1024, got {text!r}") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096) or w % 2 or h % 2:
        raise AnimateError("bad_size", f"--size needs even sides between 16 and 4096, got {text!r}")
    return w, h


def guidance(
    reference: Path = typer.Argument(..., help="The reference image (the person to animate)."),
    driving: Path = typer.Argument(..., help="The driving video (the motion)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write the guidance into."),
    size: str | None = typer.Option(
        None, "--size", help="Output WxH (default 576x1024, reference's orientation)."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    body_model: Path | None = typer.Option(
        None,
        "--body-model",
        envvar="ANIMATE_BODY_MODEL",
        help="An SMPL / SMPL-H / SMPL-X .npz model file to fit instead of Anny (never shipped).",
    ),
) -> None:
    """Fit a 3D body to the reference and the driving video; render depth/normal/semantic/mask guidance."""
    import torch

    from animate.body import Renderer, load_body
    from animate.body.fit import concat_tracks
    from animate.body.transfer import fit_driving_chunks, fit_reference, transfer
    from animate.cli.progress import StageProgress
    from animate.media import load_image, open_video
    from animate.pose import SequenceOptions, draw_pose, estimate_image, estimate_video, retarget
    from animate.settings import Settings

    settings = Settings()
    for path in (reference, driving):
        if not path.is_file():
            raise AnimateError("file_not_found", f"{path} does not exist")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    body = load_body(body_model, device)  # before the pose work: a bad model file fails fast
    image = load_image(reference, settings.media)
    ref_h, ref_w = image.rgb.shape[:2]
    out_w, out_h = parse_size(size, (ref_w, ref_h))
    video = open_video(driving, settings.media)

    progress = StageProgress()  # one line per stage on stderr (redrawn in place in a terminal)
    total = video.output_frame_count(None, max_frames)
    progress("pose", 0, total)
    ref_pose = estimate_image(image)
    poses = estimate_video(
        video,
        max_frames=max_frames,
        options=SequenceOptions(max_side=512, keep_masks=True),
        progress=lambda count, _total: progress("pose", count, total),
    )
    masks = np.stack(
        [p.mask if p.mask is not None else np.zeros((poses.height, poses.width), np.uint8) for p in poses]
    )

    progress("body", 0, len(poses))  # fitting the reference's and the driver's shapes, then frame by frame
    ref_track = fit_reference(body, ref_pose, ref_w, ref_h, ref_pose.mask)
    out_camera = ref_track.camera.cover(out_w, out_h)
    chunks = fit_driving_chunks(body, poses, masks)  # the driver's shape is fitted on the first next()

    # Skeletons: driving poses retargeted onto the reference, then into the output frame (cover + crop).
    skeletons = retarget(poses, ref_pose, ref_w, ref_h)
    s = max(out_w / ref_w, out_h / ref_h)
    offset = ((out_w - ref_w * s) / 2, (out_h - ref_h * s) / 2)

    output.mkdir(parents=True, exist_ok=True)
    poses.save(output / "poses.json")
    renderer = Renderer(body.faces, body.vertex_parts, device=device)
    fps = poses.fps if poses.fps > 0 else video.fps
    writers = VideoWriters(output, MAPS, fps, crf=settings.output_crf, preset=settings.output_preset)
    gray = lambda m: np.repeat(m[..., None], 3, axis=2)  # noqa: E731
    fitted, moved_parts = [], []
    try:
        frames = video.frames(max_frames=max_frames, size=(out_w, out_h))
        ref_rest = body.rest(body.tensor(ref_track.shape)[None])
        drv_rest = None
        # Fitting and rendering go chunk by chunk: only one chunk's meshes are ever held.
        rendered = 0
        for chunk in chunks:
            if drv_rest is None:
                drv_rest = body.rest(body.tensor(chunk.shape)[None])
            drv_camera = chunk.camera.cover(out_w, out_h)
            moved = transfer(body, chunk, ref_track, camera=out_camera, origin=fitted[0] if fitted else chunk)
            fitted.append(chunk)
            moved_parts.append(moved)
            moved_vertices = moved.vertices(body, rest=ref_rest)
            drv_vertices = chunk.vertices(body, rest=drv_rest)
            for i in range(len(chunk)):
                t = chunk.meta["start"] + i
                frame = next(frames, None)
                if frame is None:
                    break
                target = renderer.render(moved_vertices[i], out_camera)
                fit = renderer.render(drv_vertices[i], drv_camera)
                overlay = frame.copy()
                overlay[fit.mask] = (0.5 * overlay[fit.mask] + 0.5 * fit.semantic_image[fit.mask]).astype(
                    np.uint8
                )
                skeleton = draw_pose(skeletons[t].transformed((s, s), offset), out_w, out_h)
                writers.put(
                    {
                        "skeleton": skeleton,
                        "depth": gray(target.depth_image),
                        "normal": target.normal_image,
                        "semantic": target.semantic_image,
                        "mask": gray(target.mask_image),
                        "overlay": overlay,
                    }
                )
                rendered += 1
                progress("body", rendered, len(poses))
    finally:
        writers.close()
        progress.close()
    (output / "body.json").write_text(
        json.dumps(
            {
                "reference": ref_track.to_json(),
                "driving": concat_tracks(fitted).to_json(),
                "transferred": concat_tracks(moved_parts).to_json(),
                "output_size": [out_w, out_h],
            },
            separators=(",", ":"),
        )
    )
    typer.echo(f"wrote {', '.join(f'{m}.mp4' for m in MAPS)}, poses.json, body.json to {output}")
