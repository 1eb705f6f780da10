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


# --- training the identity adapter (tiny pipeline, synthetic clips with a face embedding each) -----------


def _face_clips(count: int = 2, frames: int = 2, faces: bool = True):
    from _train_fixtures import SyntheticClips

    class FaceClips(SyntheticClips):
        def __getitem__(self, i: int) -> dict:
            item = super().__getitem__(i)
            if faces:
                generator = torch.Generator().manual_seed(100 + i)
                item["reference_face_embedding"] = torch.randn(128, generator=generator)
                item["reference_has_face"] = torch.tensor(1.0)
            return item

    return FaceClips(count=count, frames=frames)


def test_identity_adapter_trains_and_reloads(tmp_path):
    from _train_fixtures import tiny_train_pipeline

    from animate.train.trainer import TrainConfig, Trainer, render_validation
    from pipelines.adapters import load_adapter

    pipe = tiny_train_pipeline()
    dataset = _face_clips()
    config = TrainConfig(
        output_dir=tmp_path,
        train=("identity",),
        steps=2,
        lr=1e-2,
        validate_every=0,
        checkpoint_every=0,
        validation_steps=2,
        progress=False,
        conditioning_dropout=0.0,
        face_loss_weight=1.0,  # the synthetic clips have no face boxes: the plain loss
    )
    trainer = Trainer(config, dataset=dataset, pipeline=pipe)
    assert trainer.forward_options.face_loss_weight == 1.0
    adapter = pipe.identity_adapter
    outputs = [layer.to_out.weight for layer in adapter.layers.values()]
    assert all(w.abs().max() == 0 for w in outputs)  # fresh: an exact no-op
    assert set(trainer.named) == {f"identity_adapter.{k}" for k, _ in adapter.named_parameters()}
    unet_before = pipe.unet.conv_in.weight.detach().clone()
    result = trainer.run()
    assert all(w.abs().max() > 0 for w in outputs)  # the zero output projections learnt
    assert torch.equal(pipe.unet.conv_in.weight, unet_before)  # only the adapter trained
    assert {p.name for p in result.final_dir.iterdir()} == {"adapter.json", "identity_adapter"}

    fresh = tiny_train_pipeline()
    assert load_adapter(fresh, result.final_dir) == ["identity_adapter"]
    item = dataset[0]
    trained = render_validation(pipe, item, config, trainer.forward_options)[0]
    loaded = render_validation(fresh, item, config, trainer.forward_options)[0]
    base = render_validation(tiny_train_pipeline(), item, config, trainer.forward_options)[0]
    assert np.array_equal(loaded, trained) and not np.array_equal(loaded, base)
    other = dict(item, reference_face_embedding=-item["reference_face_embedding"])
    assert not np.array_equal(render_validation(fresh, other, config, trainer.forward_options)[0], loaded)


def test_training_identity_without_face_data_is_a_clear_error(tmp_path):
    from _train_fixtures import tiny_train_pipeline

    from animate.train.trainer import TrainConfig, Trainer, TrainError

    with pytest.raises(TrainError, match="face loss weight must be >= 0"):
        TrainConfig(output_dir=tmp_path, face_loss_weight=-1.0).validate()
    config = TrainConfig(output_dir=tmp_path, train=("identity",), steps=1, progress=False)
    with pytest.raises(TrainError) as info:
        Trainer(config, dataset=_face_clips(faces=False), pipeline=tiny_train_pipeline())
    assert info.value.code == "no_faces"


def test_face_weight_map_by_hand():
    from animate.train.forward import face_weight_map

    nan = float("nan")
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [nan, nan, nan, nan]])
    # 16 x 32 pixels on a 2 x 4 latent grid: cells of 8 x 8, centres y 4, 12 and x 4, 12, 20, 28
    cells = face_weight_map(boxes, (16, 32), (2, 4), 3.0, prepend_reference=True)
    expected = torch.ones(1, 3, 1, 2, 4)
    expected[0, 1, 0, 0, :2] = 4.0  # frame 0 (after the reference): the two top-left cells
    assert torch.equal(cells, expected)


def test_face_loss_weight_counts_errors_in_the_face_more(monkeypatch):
    from animate.train import forward
    from animate.train.objective import EDMObjective

    objective = EDMObjective()
    sigma = torch.tensor(1.5).view(1, 1, 1, 1, 1)
    clean = torch.zeros(1, 3, 4, 2, 4)
    denoised = clean.clone()
    denoised[0, 1, :, 0, 0] = 1.0  # an error of 1 in one face cell of frame 0, all 4 channels
    fake = forward.Denoising(clean=clean, noisy=clean, sigma=sigma, denoised=denoised)
    monkeypatch.setattr(forward, "sample_denoising", lambda *args, **kwargs: fake)
    item = {
        "frames": torch.zeros(2, 3, 16, 32),
        "face_boxes": torch.tensor([[0.0, 0.0, 16, 8], [0, 0, 16, 8]]),
    }
    edm = float(objective.precondition(sigma).weight)
    plain = forward.sample_loss(None, item, objective, None, forward.ForwardOptions())
    weighted = forward.sample_loss(None, item, objective, None, forward.ForwardOptions(face_loss_weight=3.0))
    # 96 values, 4 wrong: plain = edm * 4 / 96; weights: 4 face cells x 4 channels at 4, mean (80 + 64) / 96 = 1.5
    assert float(plain) == pytest.approx(edm * 4 / 96)
    assert float(weighted) == pytest.approx(edm * 4 * 4 / 96 / 1.5)
