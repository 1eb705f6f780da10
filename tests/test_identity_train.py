"""Identity data for training: ClipDataset returns the reference frame's face embedding and the window's
face boxes from a shard with faces (hand-made values), and nothing new from a shard without them."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from animate.face.crops import face_crop, face_embedding, faces_meta
from animate.train.data import ClipDataset
from animate.train.shard import CLIPS_DIR, META_FILE, SHARD_FILE
from tests.test_train_data import REFERENCES, T, write_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _add_faces(clip_dir, embeddings: np.ndarray, boxes: np.ndarray) -> None:
    with zipfile.ZipFile(clip_dir / SHARD_FILE, "a") as archive:
        for name, array in (("face_embeddings", embeddings), ("face_boxes", boxes)):
            with archive.open(f"{name}.npy", "w") as handle:
                np.lib.format.write_array(handle, array)
    meta = json.loads((clip_dir / META_FILE).read_text())
    meta["faces"] = faces_meta(int(np.isfinite(boxes[:, 0]).sum()))
    (clip_dir / META_FILE).write_text(json.dumps(meta))


def test_dataset_returns_the_reference_face_embedding_and_window_boxes(tmp_path):
    write_clip(tmp_path, "clip-a")
    embeddings = np.full((len(REFERENCES), 128), np.nan, np.float32)  # reference 2: no face
    embeddings[1] = np.arange(128, dtype=np.float32) / 128  # reference 9: a face
    boxes = np.stack([np.array([t, t + 1, t + 10, t + 12], np.float32) for t in range(T)])
    boxes[5] = np.nan
    _add_faces(tmp_path / CLIPS_DIR / "clip-a", embeddings, boxes)
    ds = ClipDataset(tmp_path, frames=3, size=(64, 96))  # twice the stored 32 x 48
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        sample = ds[0]
        ref, start = int(sample["reference_index"]), int(sample["start"])
        seen.add(ref)
        if ref == 9:
            assert torch.equal(sample["reference_face_embedding"], torch.arange(128) / 128)
            assert float(sample["reference_has_face"]) == 1.0
        else:
            assert torch.equal(sample["reference_face_embedding"], torch.zeros(128))
            assert float(sample["reference_has_face"]) == 0.0
        expected = np.stack(
            [[2 * t, 2 * (t + 1), 2 * (t + 10), 2 * (t + 12)] for t in range(start, start + 3)]
        )
        expected = expected.astype(np.float32)
        expected[[t - start for t in range(start, start + 3) if t == 5]] = np.nan
        np.testing.assert_array_equal(sample["face_boxes"].numpy(), expected)
    assert seen == set(REFERENCES)


def test_dataset_without_faces_has_no_face_keys(tmp_path):
    write_clip(tmp_path, "clip-a")
    assert not {"reference_face_embedding", "reference_has_face", "face_boxes"} & set(
        ClipDataset(tmp_path, frames=3)[0]
    )


def test_face_crop_and_embedding_on_a_real_frame_and_a_faceless_one():
    import av

    from tests.conftest import SKELETON_ONLY, TALKING_HEAD

    def frame(path, index):
        with av.open(str(path)) as container:
            for i, f in enumerate(container.decode(video=0)):
                if i == index:
                    return f.to_ndarray(format="rgb24")

    head = frame(TALKING_HEAD, 40)
    crop, box = face_crop(head)
    assert crop.shape == (112, 112, 3) and np.isfinite(box).all()
    # dlib's detector finds the face again on its own aligned crop (upsampled), centred like the template
    from animate.face import detect_face

    again = detect_face(crop)
    assert again is not None and abs((again.box[0] + again.box[2]) / 2 - 56) < 12
    assert face_embedding(head).shape == (128,) and np.isfinite(face_embedding(head)).all()
    blank = frame(SKELETON_ONLY, 10)
    crop, box = face_crop(blank)
    assert crop is None and np.isnan(box).all() and np.isnan(face_embedding(blank)).all()
