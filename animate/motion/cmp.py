"""The dense motion field from CMP, when its checkpoint is in the weights directory (DisPose's path).

``find_cmp_checkpoint`` says whether ``weights/cmp/ckpt_iter_42000.pth.tar`` is there; ``load_cmp`` loads it
(AnimateError ``weights_invalid`` when it does not fit); ``cmp_dense_flow`` turns sparse keypoint motion
(``keypoint_flow.conventional_sparse_motion``) into ``(T, H, W, 2)`` float32 flow in output pixels,
``flow[t]`` moving reference pixels to frame t, like ``GuidanceBundle.dense_flow``. Without the checkpoint
the dense field comes from the body model; a randomly initialised CMP is never used.

Two input/output rules (``GuidanceConventions.cmp_io``): ``"resample"`` (ours: the reference resized to CMP's
384 x 384 bilinearly with antialiasing, full-size sparse vectors moved to the cell holding their pixel
centre, the flow resized back bilinearly) and ``"dispose"`` (DisPose's ``inference_ctrl.py``: the reference
resized by nearest neighbour, the sparse input already on the grid (``keypoint_flow.dispose_sparse_motion``),
the flow resized back by nearest neighbour and scaled to output pixels).

Layering: ``controlnets`` (torch) is imported inside the functions that need it, so importing
``animate.motion`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from animate.errors import AnimateError

if TYPE_CHECKING:
    from controlnets.cmp import CMPFlow

#: Where the released CMP checkpoint goes, relative to the weights directory.
CMP_CHECKPOINT = Path("cmp") / "ckpt_iter_42000.pth.tar"
OUTSIDE_MODES = ("keep", "zero")
CMP_IO_RULES = ("resample", "dispose")


def find_cmp_checkpoint(weights_dir: str | Path | None) -> Path | None:
    """``weights_dir/cmp/ckpt_iter_42000.pth.tar`` when it is a file, else None."""
    if weights_dir is None:
        return None
    path = Path(weights_dir) / CMP_CHECKPOINT
    return path if path.is_file() else None


def load_cmp(path: str | Path, *, device: str | None = None, dtype=None) -> CMPFlow:
    """``CMPFlow.from_checkpoint`` with its errors as ``AnimateError("weights_invalid")``."""
    import torch

    from controlnets.cmp import CMPCheckpointError, CMPFlow

    try:
        return CMPFlow.from_checkpoint(path, device=device, dtype=dtype or torch.float32)
    except CMPCheckpointError as exc:
        raise AnimateError(exc.code, f"CMP checkpoint: {exc}") from None


def cmp_dense_flow(
    reference: np.ndarray,
    reference_mask: np.ndarray,
    sparse_flow: np.ndarray,
    sparse_mask: np.ndarray,
    model: CMPFlow,
    batch: int = 8,
    *,
    outside: str = "keep",
    io: str = "resample",
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """CMP's dense flow for every frame, ``(T, H, W, 2)`` float32 in output pixels.

    reference: ``(H, W, 3)`` uint8 RGB; reference_mask: ``(H, W)`` the reference person (any nonzero);
    sparse_flow ``(T, h, w, 2)`` and sparse_mask ``(T, h, w)`` from ``conventional_sparse_motion`` for the
    same ``io`` rule (see the module): the output size with ``"resample"``, CMP's grid with ``"dispose"``. The reference is
    encoded once; frames run ``batch`` at a time on the model's device. ``outside="keep"`` returns CMP's
    field as DisPose feeds it to its ControlNet; ``"zero"`` keeps the background still (the flow fades to
    zero within a small margin around the reference mask). ``callback(done, total)`` after each batch
    (it may raise to cancel). The model must come from ``CMPFlow.from_checkpoint`` (``load_cmp``).
    """
    import torch

    if getattr(model, "checkpoint_path", None) is None:
        raise AnimateError("weights_missing", "CMP has no loaded checkpoint; refusing to run random weights")
    if outside not in OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {OUTSIDE_MODES}, got {outside!r}")
    if io not in CMP_IO_RULES:
        raise ValueError(f"io must be one of {CMP_IO_RULES}, got {io!r}")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    height, width = reference.shape[:2]
    frames = len(sparse_flow)
    if reference.shape != (height, width, 3) or reference_mask.shape != (height, width):
        raise ValueError(f"reference {reference.shape} and mask {reference_mask.shape} disagree")
    grid = (model.config.input_size,) * 2 if io == "dispose" else (height, width)
    if sparse_flow.shape != (frames, *grid, 2) or sparse_mask.shape != (frames, *grid):
        raise ValueError(
            f"sparse flow {sparse_flow.shape} / mask {sparse_mask.shape} do not fit ({frames}, {grid})"
        )

    device = model.device
    image = torch.from_numpy(np.ascontiguousarray(reference)).permute(2, 0, 1)[None].float() / 255.0
    run = _dispose_run(model, image, (height, width)) if io == "dispose" else _resample_run(model, image)
    out = np.empty((frames, height, width, 2), np.float32)
    for start in range(0, frames, batch):
        stop = min(start + batch, frames)
        flow = torch.from_numpy(np.ascontiguousarray(sparse_flow[start:stop], np.float32)).permute(0, 3, 1, 2)
        mask = torch.from_numpy(np.ascontiguousarray(sparse_mask[start:stop]) > 0)
        dense = run(flow.to(device), mask.to(device))
        out[start:stop] = dense.permute(0, 2, 3, 1).float().cpu().numpy()
        if callback is not None:
            callback(stop, frames)
    if outside == "zero":
        out *= _soft_mask(reference_mask)[None, :, :, None]
    return out


def _resample_run(model: CMPFlow, image):
    """Ours: ``CMPFlow.propagate`` (bilinear in and out, vectors moved by pixel centre)."""
    features = model.encode_reference(image)
    return lambda flow, mask: model.propagate(features, flow, mask)


def _dispose_run(model: CMPFlow, image, size: tuple[int, int]):
    """DisPose's: the reference and the flow resized by nearest neighbour (``F.interpolate``'s default), the
    sparse input already on the grid."""
    import torch
    import torch.nn.functional as F

    side = model.config.input_size
    height, width = size
    grid = F.interpolate(image.to(model.device), size=(side, side), mode="nearest")
    with torch.no_grad():
        features = model.encode_image(model.normalize_image(grid).to(model.dtype))
    scale = torch.tensor([width / side, height / side], device=model.device).view(1, 2, 1, 1)

    @torch.no_grad()
    def run(flow, mask):
        mask = mask[:, None].to(flow.dtype)
        logits = model.decode(features, torch.cat([flow, mask, mask], dim=1).to(model.dtype))
        dense = model.logits_to_flow(logits, (side, side))
        return F.interpolate(dense, size=(height, width), mode="nearest") * scale

    return run


def _soft_mask(mask: np.ndarray) -> np.ndarray:
    """The person mask grown by ~2% of the image size and feathered over as much again, in [0, 1]."""
    height, width = mask.shape
    margin = max(2, round(0.02 * max(height, width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    grown = cv2.dilate((mask > 0).astype(np.uint8), kernel).astype(np.float32)
    # the blur is 0.5 on the grown edge: doubled, it is 1 up to the edge and fades out beyond it
    return np.clip(cv2.GaussianBlur(grown, (0, 0), sigmaX=margin / 2) * 2.0, 0.0, 1.0)
