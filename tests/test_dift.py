"""DiftFeaturizer on a tiny Stable-Diffusion-shaped model saved in the real diffusers layout (SD 1.5's block
types and scheduler config, a CLIP tokenizer as vocab.json + merges.txt), run on a real photo."""

from __future__ import annotations

import gc
import weakref

import cv2
import numpy as np
import pytest
import torch
from conftest import ANIME_PNG, WOMAN_JPG

from controlnets.dift import DiftFeaturizer, DiftLoadError, sample_keypoint_features
from pipelines.testing import save_tiny_sd15


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """SD 1.5's layout and block structure at toy widths: 4 UNet levels, a VAE downsampling by 8."""
    return save_tiny_sd15(tmp_path_factory.mktemp("sd15"))


def photo(path, width: int, height: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_AREA)


def test_dift_features_shape_and_determinism(sd_dir):
    woman = photo(WOMAN_JPG, 128, 192)
    with DiftFeaturizer.from_pretrained(sd_dir, seed=7) as dift:
        assert (dift.timestep, dift.up_block_index, dift.ensemble_size) == (261, 1, 8)
        assert (dift.feature_stride, dift.size_multiple, dift.channels) == (16, 64, 32)
        features = dift(woman)
        assert features.shape == (1, 32, 12, 8) and features.dtype == torch.float32
        assert torch.isfinite(features).all()
        assert torch.equal(dift(woman), features)  # same seed, same features
        assert not torch.allclose(dift(woman, seed=8), features)
        assert not torch.allclose(dift(photo(ANIME_PNG, 128, 192)), features)
        # sizes that are not multiples of 64 are resized for the UNet; the map is floor(size / 16)
        assert dift(photo(WOMAN_JPG, 100, 150)).shape == (1, 32, 9, 6)


def test_dift_stops_the_unet_at_up_block_1_with_its_exact_output(sd_dir):
    with DiftFeaturizer.from_pretrained(sd_dir) as dift:
        unet = dift.unet
        torch.manual_seed(0)
        latents, timesteps = torch.randn(2, 4, 8, 8), torch.full((2,), 261)
        later, full = [], []
        handles = [
            unet.up_blocks[2].register_forward_hook(lambda *_: later.append(1)),
        ]
        ours = dift._up_block_output(latents, timesteps)
        assert later == [] and ours.shape == (2, 32, 4, 4)  # latent / 2: image / 16
        handles.append(unet.up_blocks[1].register_forward_hook(lambda _m, _i, out: full.append(out)))
        unet(latents, timesteps, encoder_hidden_states=dift.prompt_embeds.expand(2, -1, -1))
        for handle in handles:
            handle.remove()
        assert later == [1]
        torch.testing.assert_close(ours, full[0])


def test_dift_result_does_not_depend_on_ensemble_batching(sd_dir):
    woman = photo(WOMAN_JPG, 64, 128)
    with DiftFeaturizer.from_pretrained(sd_dir, ensemble_size=4) as whole:
        expected = whole(woman)
    with DiftFeaturizer.from_pretrained(sd_dir, ensemble_size=4, ensemble_batch=1) as one_by_one:
        torch.testing.assert_close(one_by_one(woman), expected, atol=1e-5, rtol=1e-5)
    with DiftFeaturizer.from_pretrained(sd_dir, ensemble_size=1) as single:
        assert not torch.allclose(single(woman), expected)  # the average is over more than one copy


def test_dift_prompt_comes_from_the_real_text_encoder(sd_dir):
    woman = photo(WOMAN_JPG, 64, 64)
    with (
        DiftFeaturizer.from_pretrained(sd_dir) as human,
        DiftFeaturizer.from_pretrained(sd_dir, prompt="cat") as cat,
    ):
        assert human.prompt_embeds.shape == (1, 77, 32)
        assert not torch.equal(human.prompt_embeds, cat.prompt_embeds)
        assert not torch.allclose(human(woman), cat(woman))
        assert not hasattr(human, "text_encoder")


def test_dift_close_frees_the_models(sd_dir):
    dift = DiftFeaturizer.from_pretrained(sd_dir)
    unet, vae = weakref.ref(dift.unet), weakref.ref(dift.vae)
    dift(photo(WOMAN_JPG, 64, 64))
    dift.close()
    gc.collect()
    assert dift.closed and dift.unet is None and dift.vae is None and dift.prompt_embeds is None
    assert unet() is None and vae() is None
    with pytest.raises(RuntimeError, match="closed"):
        dift(photo(WOMAN_JPG, 64, 64))
    with DiftFeaturizer.from_pretrained(sd_dir) as scoped:
        pass
    assert scoped.closed


def test_dift_rejects_incomplete_directories_and_bad_images(sd_dir, tmp_path):
    with pytest.raises(DiftLoadError, match="no unet, vae") as info:
        DiftFeaturizer.from_pretrained(tmp_path)
    assert info.value.code == "weights_invalid"
    with DiftFeaturizer.from_pretrained(sd_dir) as dift, pytest.raises(ValueError, match="uint8"):
        dift(np.zeros((64, 64, 3), np.float32))


def test_keypoint_features_are_bilinear_on_the_feature_grid():
    h, w = 4, 6  # a 96 x 64 image at stride 16
    ramp_x = torch.arange(w, dtype=torch.float32).expand(h, w)
    ramp_y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    features = torch.stack([ramp_x, ramp_y, ramp_x * 10 + ramp_y])[None]
    # cell centres sit at 16 j + 8; between them the value is linear; outside, the border value
    points = np.array(
        [[8.0, 8.0, 1.0], [24.0, 40.0, 0.2], [20.0, 30.0, 1.0], [95.9, 0.0, 1.0], [-50.0, 200.0, 1.0]]
    )
    sampled = sample_keypoint_features(features, points, (96, 64))
    assert sampled.shape == (5, 3)
    expected_x = np.clip((points[:, 0] - 8) / 16, 0, w - 1)
    expected_y = np.clip((points[:, 1] - 8) / 16, 0, h - 1)
    expected = np.stack([expected_x, expected_y, expected_x * 10 + expected_y], 1)
    np.testing.assert_allclose(sampled.numpy(), expected, atol=1e-5)
