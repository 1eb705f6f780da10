"""UNet injection hooks: skip bookkeeping by hand, residual additions against hand-added tensors."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from pipelines.injection import UNetInjector, _add_rows, skip_multiplicities, skip_origins
from pipelines.testing import tiny_unet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return tiny_unet()


def test_skip_bookkeeping_of_the_tiny_unet(unet):
    # conv_in, then down block 0: 2 resnets + 1 downsampler, down block 1: 2 resnets (no downsampler).
    assert skip_origins(unet) == [0, 0, 0, 0, 1, 1]
    assert skip_multiplicities(unet, "once") == [1] * 6
    assert skip_multiplicities(unet, "dispose") == [2, 2, 2, 2, 1, 1]
    # Up blocks take 3 skips each from the end: the first up block gets skips 3..5.
    assert UNetInjector(unet)._up_skips == [[3, 4, 5], [0, 1, 2]]


def test_svd_xt_dispose_multiplicities():
    with torch.device("meta"):
        svd = UNetSpatioTemporalConditionModel()  # the SVD-xt config: 4 down blocks of 2 resnets
    assert skip_multiplicities(svd, "dispose") == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
    assert UNetInjector(svd)._up_skips == [[9, 10, 11], [6, 7, 8], [3, 4, 5], [0, 1, 2]]
    with pytest.raises(ValueError) as excinfo:
        skip_multiplicities(svd, "twice")
    assert str(excinfo.value) == "residual mode must be one of ('once', 'dispose'), got 'twice'"


def test_add_rows_adds_after_the_skipped_rows_one_addition_at_a_time():
    tensor = torch.zeros(4, 2, dtype=torch.float16)
    residual = torch.full((2, 2), 0.1, dtype=torch.float64)
    out = _add_rows(tensor, residual, skip_rows=2, times=3)
    step = torch.tensor(0.1, dtype=torch.float16)
    expected = torch.zeros(4, 2, dtype=torch.float16)
    expected[2:] = step + step + step  # three float16 additions, not one multiplication
    assert out.dtype == torch.float16 and torch.equal(out, expected)
    assert torch.equal(_add_rows(torch.ones(2, 2), torch.ones(2, 2), 0, 1), torch.full((2, 2), 2.0))


def test_conv_in_residual_is_added_to_the_rows_after_skip_rows(unet):
    x = torch.randn(3, 8, 8, 8)
    plain = unet.conv_in(x)
    residual = torch.randn(2, *plain.shape[1:])
    injector = UNetInjector(unet)
    with injector, injector.conv_in_residual(residual, skip_rows=1):
        hooked = unet.conv_in(x)
        unet.conv_in(x)
    torch.testing.assert_close(hooked[0], plain[0])
    torch.testing.assert_close(hooked[1:], plain[1:] + residual)
    assert injector.calls_with_residual == 2
    torch.testing.assert_close(unet.conv_in(x), plain)  # hooks gone after the block
    with injector:
        torch.testing.assert_close(unet.conv_in(x), plain)  # no residual set: untouched
        with injector.conv_in_residual(residual[:1]), pytest.raises(ValueError) as excinfo:
            unet.conv_in(x)
    assert str(excinfo.value) == (
        "guidance features (1, 32, 8, 8) do not fit the UNet's conv_in output (3, 32, 8, 8) "
        "(after skipping 0 rows)"
    )


def test_controlnet_residuals_reach_each_skip_times_its_multiplicity(unet):
    injector = UNetInjector(unet)
    down = [torch.full((2, 4), float(i + 1)) for i in range(6)]
    mid = torch.full((2, 4), 10.0)
    skips = tuple(torch.zeros(3, 4) for _ in range(3))
    with injector.controlnet_residuals(down, mid, mode="dispose", skip_rows=1):
        # Up block 0 receives skips 3, 4, 5 (multiplicities 2, 1, 1); up block 1 skips 0, 1, 2 (2 each).
        _, kwargs = injector._before_up_block(0)(None, (), {"res_hidden_states_tuple": skips})
        got = [s[1:, 0].tolist() for s in kwargs["res_hidden_states_tuple"]]
        assert got == [[8.0, 8.0], [5.0, 5.0], [6.0, 6.0]]
        _, kwargs = injector._before_up_block(1)(None, (), {"res_hidden_states_tuple": skips})
        assert [s[1:, 0].tolist() for s in kwargs["res_hidden_states_tuple"]] == [
            [2.0] * 2,
            [4.0] * 2,
            [6.0] * 2,
        ]
        assert all((s[0] == 0).all() for s in kwargs["res_hidden_states_tuple"])  # the skipped row
        with pytest.raises(ValueError) as excinfo:
            injector._before_up_block(1)(None, (), {"res_hidden_states_tuple": (torch.zeros(4, 4),) * 3})
        assert (
            str(excinfo.value)
            == "ControlNet residual down 0 (2, 4) does not fit the UNet's (4, 4) (after skipping 1 rows)"
        )
        out = injector._after_mid_block(None, (), torch.zeros(3, 4))
        assert out[1:].eq(10.0).all() and out[0].eq(0.0).all()
        assert injector.calls_with_controlnet == 1
        with pytest.raises(ValueError) as excinfo:
            injector._after_mid_block(None, (), torch.zeros(4, 4))
        assert (
            str(excinfo.value)
            == "ControlNet residual mid (2, 4) does not fit the UNet's (4, 4) (after skipping 1 rows)"
        )
    assert injector._before_up_block(0)(None, (), {"res_hidden_states_tuple": skips}) is None
    assert injector._after_mid_block(None, (), torch.zeros(3, 4)) is None
    with pytest.raises(ValueError) as excinfo, injector.controlnet_residuals(down[:5], None):
        pass
    assert str(excinfo.value) == "5 down residuals for a UNet with 6 skip connections"


def _forward(unet, sample):
    torch.manual_seed(1)
    hidden = torch.randn(1, 1, 32)
    return unet(sample, torch.tensor([10.0]), hidden, torch.tensor([[6.0, 127.0, 0.02]])).sample


def test_hooks_reach_the_unet_forward_and_leave_with_the_block(unet):
    # The skips the up blocks receive, seen by a pre-hook of our own registered after the injector's.
    torch.manual_seed(0)
    sample = torch.randn(1, 2, 8, 8, 8)
    seen: dict[int, tuple] = {}

    def spy(index):
        def hook(module, args, kwargs):
            seen[index] = tuple(t.clone() for t in kwargs["res_hidden_states_tuple"])

        return hook

    injector = UNetInjector(unet)
    shapes = [(2, 32, 8, 8)] * 3 + [(2, 32, 4, 4)] + [(2, 64, 4, 4)] * 2
    down = [torch.full(shape, 0.01 * (k + 1)) for k, shape in enumerate(shapes)]
    with injector:
        handles = [
            b.register_forward_pre_hook(spy(i), with_kwargs=True) for i, b in enumerate(unet.up_blocks)
        ]
        plain = _forward(unet, sample)
        plain_skips = dict(seen)
        with injector.controlnet_residuals([torch.zeros(s) for s in shapes], torch.zeros(2, 64, 4, 4)):
            assert torch.equal(_forward(unet, sample), plain)
        with injector.controlnet_residuals(down, torch.zeros(2, 64, 4, 4), mode="dispose"):
            changed = _forward(unet, sample)
        for handle in handles:
            handle.remove()
    assert injector.calls_with_controlnet == 2 and not torch.equal(changed, plain)
    times = [2, 2, 2, 2, 1, 1]
    for up, skips in zip((0, 1), ([3, 4, 5], [0, 1, 2]), strict=True):
        for position, k in enumerate(skips):
            expected = plain_skips[up][position]
            for _ in range(times[k]):
                expected = expected + down[k]
            torch.testing.assert_close(seen[up][position], expected)
    torch.testing.assert_close(_forward(unet, sample), plain)  # hooks removed on exit
    assert injector._handles == []
