"""DIFT's feature extraction against a written-out reference: pixels to [-1, 1], the image resized to the
nearest multiple of 64 (antialiased bilinear), a VAE sample ``mean + std * eps`` scaled by 0.18215, DDPM
noising at t = 261 with SD's scaled-linear betas computed by hand, the UNet's ``up_blocks[1]`` output
averaged over the ensemble, resized to ``floor(size / 16)``; and the constructor's rules (block bounds,
strides, channels, refusals). Runs on the tiny SD 1.5-shaped model of ``pipelines.testing``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from controlnets.dift import DiftFeaturizer, DiftLoadError, encode_prompt, sample_keypoint_features
from pipelines.testing import save_tiny_sd15

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd15(tmp_path_factory.mktemp("sd15_rules"))


@pytest.fixture(scope="module")
def dift(sd_dir):
    featurizer = DiftFeaturizer.from_pretrained(sd_dir, ensemble_size=3, ensemble_batch=2, seed=5)
    yield featurizer
    featurizer.close()


def alphas_cumprod_by_hand(steps: int = 1000) -> np.ndarray:
    """SD's "scaled_linear" schedule: betas evenly spaced in sqrt between 0.00085 and 0.012, squared."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def reference_features(
    dift: DiftFeaturizer, image: np.ndarray, seed: int, size: tuple[int, int]
) -> torch.Tensor:
    height, width = image.shape[:2]
    pixels = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 255.0 * 2 - 1
    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    posterior = dift.vae.encode(pixels).latent_dist
    generator = torch.Generator().manual_seed(seed)
    shape = (dift.ensemble_size, *posterior.mean.shape[1:])
    eps = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    latents = (posterior.mean + posterior.std * eps) * 0.18215
    alpha = float(alphas_cumprod_by_hand()[261])
    noisy = alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise
    captured = []
    handle = dift.unet.up_blocks[1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        embeds = dift.prompt_embeds.expand(len(noisy), -1, -1)
        dift.unet(noisy, torch.full((len(noisy),), 261), encoder_hidden_states=embeds)
    finally:
        handle.remove()
    mean = captured[0].mean(dim=0, keepdim=True)
    return F.interpolate(mean, size=(height // 16, width // 16), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(80, 112, (64, 128)), (64, 128, (64, 128)), (40, 20, (64, 64))],  # resized up, exact, tiny image
)
def test_features_equal_the_written_out_dift_recipe(dift, height, width, size):
    generator = np.random.default_rng(height + width)
    image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = dift(image)
        expected = reference_features(dift, image, seed=5, size=size)
    assert ours.shape == (1, 32, max(1, height // 16), max(1, width // 16)) == expected.shape
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(
            dift(image, seed=6), reference_features(dift, image, 6, size), atol=1e-4, rtol=1e-4
        )


def test_feature_size_is_floor_of_size_over_stride_at_least_one(dift):
    assert dift.feature_size(80, 112) == (5, 7)
    assert dift.feature_size(15, 40) == (1, 2)
    assert dift.feature_size(31, 32) == (1, 2)


def test_constructor_rules_and_strides_per_block(dift, sd_dir):
    unet, vae, scheduler, embeds = dift.unet, dift.vae, dift.scheduler, dift.prompt_embeds
    assert (dift.ensemble_size, dift.ensemble_batch, dift.seed) == (3, 2, 5)
    # block_out_channels (16, 16, 32, 32) reversed: up_blocks[i] outputs 32, 32, 16 channels
    for index, stride, channels in ((0, 32, 32), (1, 16, 32), (2, 8, 16)):
        featurizer = DiftFeaturizer(unet, vae, scheduler, embeds, up_block_index=index)
        assert (featurizer.feature_stride, featurizer.size_multiple, featurizer.channels) == (
            stride,
            64,
            channels,
        )
        assert featurizer.ensemble_batch == featurizer.ensemble_size == 8 and featurizer.seed == 0
    for index in (3, -1):  # the last up block keeps full resolution; no negative indices
        with pytest.raises(ValueError, match=r"up_block_index must name an upsampling block \(< 3\)"):
            DiftFeaturizer(unet, vae, scheduler, embeds, up_block_index=index)
    with pytest.raises(DiftLoadError) as info:
        DiftFeaturizer(unet, vae, scheduler, torch.zeros(1, 77, 16))
    assert str(info.value) == "prompt embedding width 16 does not fit the UNet's cross_attention_dim 32"
    with pytest.raises(ValueError) as info:
        DiftFeaturizer(unet, vae, scheduler, embeds, ensemble_size=0)
    assert str(info.value) == "ensemble_size must be at least 1"
    # a float64 prompt embedding follows the UNet's dtype; both models are frozen
    featurizer = DiftFeaturizer(unet, vae, scheduler, embeds.double())
    assert featurizer.prompt_embeds.dtype == torch.float32
    assert torch.equal(featurizer.prompt_embeds, embeds)
    assert not any(p.requires_grad for p in [*unet.parameters(), *vae.parameters()])
    assert not unet.training and not vae.training
    assert DiftFeaturizer(unet, vae, scheduler, embeds, ensemble_size=1).ensemble_batch == 1


def test_from_pretrained_loads_float32_and_refuses_broken_parts(sd_dir, tmp_path):
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / name).mkdir()
    with pytest.raises(DiftLoadError, match=r"^cannot load Stable Diffusion from "):
        DiftFeaturizer.from_pretrained(tmp_path)
    (tmp_path / "vae").rmdir()
    (tmp_path / "scheduler").rmdir()
    with pytest.raises(DiftLoadError) as info:
        DiftFeaturizer.from_pretrained(tmp_path)
    assert str(info.value) == f"{tmp_path} is not a Stable Diffusion directory: no vae, scheduler"


def test_a_prompt_longer_than_the_text_encoder_is_truncated(sd_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder")
    long = " ".join(["human"] * 120)
    embeds = encode_prompt(tokenizer, encoder, long)
    assert embeds.shape == (1, 77, 32)
    short = encode_prompt(tokenizer, encoder, "cat")
    assert short.shape == (1, 77, 32)  # padded to the full length
    ids = tokenizer("cat").input_ids
    padded = ids + [tokenizer.pad_token_id] * (77 - len(ids))
    with torch.no_grad():
        torch.testing.assert_close(short, encoder(torch.tensor([padded]))[0])


def test_keypoint_features_read_the_first_map_and_ignore_extra_columns():
    features = torch.arange(2 * 1 * 2 * 2, dtype=torch.float64).view(2, 1, 2, 2)  # two maps, float64
    points = np.array([[0.0, 0.0, 0.9, 7.0], [32.0, 32.0, 0.1, 7.0]])  # x, y in a 32 x 32 image, extras
    sampled = sample_keypoint_features(features, points, (32, 32))
    assert sampled.dtype == torch.float32 and sampled.shape == (2, 1)
    torch.testing.assert_close(sampled[:, 0], torch.tensor([0.0, 3.0]))  # the border values of map 0


def test_from_pretrained_in_float64_computes_the_prompt_in_float64_too(sd_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    with DiftFeaturizer.from_pretrained(sd_dir, torch_dtype=torch.float64, ensemble_size=1) as dift:
        assert dift.unet.dtype == dift.vae.dtype == dift.prompt_embeds.dtype == torch.float64
        tokenizer = CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder", torch_dtype=torch.float64)
        assert torch.equal(dift.prompt_embeds, encode_prompt(tokenizer, encoder, "photo of a human"))
        features = dift(np.full((64, 64, 3), 128, np.uint8))
        assert features.dtype == torch.float32 and features.shape == (1, 32, 4, 4)


def test_close_empties_the_cuda_cache_only_for_a_model_on_cuda(dift, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    unet, vae, scheduler, embeds = dift.unet, dift.vae, dift.scheduler, dift.prompt_embeds
    on_cpu = DiftFeaturizer(unet, vae, scheduler, embeds)
    on_cpu.close()
    assert calls == [] and on_cpu.closed
    on_cpu.close()  # twice is fine
    assert calls == []
    on_gpu = DiftFeaturizer(unet, vae, scheduler, embeds)
    on_gpu.unet = type("CudaUNet", (), {"device": torch.device("cuda", 0)})()  # only its device is read
    on_gpu.close()
    assert calls == [1] and on_gpu.closed


def test_from_pretrained_reads_the_asked_variant_of_every_part(sd_dir, tmp_path):
    """A directory holding only ``*.fp16.*`` weight files (as SD 1.5's fp16 variant) loads with
    ``variant="fp16"`` and not without it."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = tmp_path / "variant"
    shutil.copytree(sd_dir, root)
    for name, cls in (
        ("unet", UNet2DConditionModel),
        ("vae", AutoencoderKL),
        ("text_encoder", CLIPTextModel),
    ):
        model = cls.from_pretrained(root / name)
        for weights in [*(root / name).glob("*.safetensors"), *(root / name).glob("*.bin")]:
            weights.unlink()
        model.save_pretrained(root / name, variant="fp16")
    with DiftFeaturizer.from_pretrained(root, variant="fp16", ensemble_size=1) as dift:
        assert dift.channels == 32
    with pytest.raises(DiftLoadError, match="cannot load Stable Diffusion"):
        DiftFeaturizer.from_pretrained(root)
