"""Inference forms compute bit for bit what spandrel's modules compute, with less work."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import photo
from spandrel import ModelLoader
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SPAN.__arch.span import SPAB, Conv3XC
from tilewise.engine import TileSettings, run_tiled
from tilewise.engine.compute.inference_forms import prepare
from tilewise.engine.compute.precision import model_on

pytestmark = pytest.mark.usefixtures("one_thread")


def span_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(spandrel's SPAN, a prepared copy with the same weights), both in eval mode."""
    torch.manual_seed(seed)
    original = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2).eval()
    with torch.no_grad():
        for parameter in original.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        probe = original(photo(height=32, width=32))  # then scale the last convolution to image range
        last = original.upsampler[0]
        gain = 0.15 / probe.std()
        last.weight.mul_(gain)
        last.bias.mul_(gain).add_(0.45 - probe.mean().item() * gain)
    prepared = copy.deepcopy(original)
    assert prepare(prepared) == 6 * 3 + 2 + 6  # every Conv3XC and every SPAB
    return original, prepared


def test_prepare_keeps_types_state_and_is_idempotent():
    original, prepared = span_pair()
    assert prepare(prepared) == 0
    assert all(type(m) is not Conv3XC and type(m) is not SPAB for m in prepared.modules())
    assert isinstance(prepared.conv_1, Conv3XC) and isinstance(prepared.block_1, SPAB)
    reference, state = original.state_dict(), prepared.state_dict()
    assert list(reference) == list(state)
    assert all(torch.equal(reference[k], state[k]) for k in reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_bitwise_equal_to_spandrel(dtype, layout, mode):
    original, prepared = span_pair()
    original, prepared = original.to(dtype), prepared.to(dtype)
    x = photo(height=40, width=36).to(dtype).contiguous(memory_format=layout)
    with mode():
        expected = original(x)
        for _ in range(2):  # the second call reuses the fused kernels
            assert torch.equal(prepared(x), expected)


def test_kernels_fused_once_and_again_after_a_weight_changes(monkeypatch):
    original, prepared = span_pair()
    calls = []
    derive = Conv3XC.update_params
    monkeypatch.setattr(Conv3XC, "update_params", lambda self: (calls.append(self), derive(self))[1])
    x = photo(height=24, width=24)
    with torch.inference_mode():
        prepared(x)
        prepared(x)
    assert len(calls) == 20
    with torch.no_grad():  # in place, as a weight-patching tool would
        for model in (original, prepared):
            model.block_3.c2_r.conv[1].weight.mul_(1.5)
    with torch.inference_mode():
        expected = original(x)
        calls.clear()
        assert torch.equal(prepared(x), expected)
    assert [id(c) for c in calls] == [id(prepared.block_3.c2_r)]


def test_a_changed_weight_changes_the_output():
    """The comparison above can fail: a stale kernel gives a different image."""
    _, prepared = span_pair()
    x = photo(height=24, width=24)
    with torch.inference_mode():
        before = prepared(x)
    with torch.no_grad():
        prepared.conv_2.sk.weight.add_(0.2)
    with torch.inference_mode():
        assert not torch.equal(prepared(x), before)


def test_training_and_gradients_use_the_original_forward():
    original, prepared = span_pair()
    x = photo(height=20, width=20)
    for model in (original, prepared):
        model.train()
    torch.manual_seed(1)
    assert torch.equal(prepared(x), original(x))
    for model in (original, prepared):
        model.eval()
    x_grad = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [m(xi) for m, xi in zip((original, prepared), x_grad)]
    for out in outputs:
        out.square().mean().backward()
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(x_grad[0].grad, x_grad[1].grad)


def test_the_engine_runs_the_forms_on_a_private_copy_only(monkeypatch):
    """The shared module (the host's, also used by its core nodes and other packs) keeps
    spandrel's classes; the engine runs a private copy with the forms, and gets the same bits."""
    original, _ = span_pair()
    state = original.state_dict()
    image = photo(height=48, width=40)
    settings = TileSettings(tile=24, pad=8, channels_last=True)
    descriptor = ModelLoader().load_from_state_dict(state)
    classes = [type(m) for m in descriptor.model.modules()]
    result = run_tiled(descriptor, image, settings=settings)
    assert [type(m) for m in descriptor.model.modules()] == classes and type(descriptor.model.conv_1) is Conv3XC
    private = model_on(descriptor, torch.device("cpu"), torch.float32)
    assert (
        private is not descriptor.model and type(private.conv_1) is not Conv3XC and isinstance(private.conv_1, Conv3XC)
    )
    with monkeypatch.context() as patch:  # the reference: the same engine run with spandrel's own classes
        patch.setattr("tilewise.engine.compute.inference_forms.prepare", lambda model: 0)
        plain = ModelLoader().load_from_state_dict(state)
        expected = run_tiled(plain, image, settings=settings)
        assert type(model_on(plain, torch.device("cpu"), torch.float32).conv_1) is Conv3XC
    assert 0.9 < ((result > 0) & (result < 1)).float().mean()  # not a clamped, saturated image
    assert torch.equal(result, expected)
    variant = model_on(descriptor, torch.device("cpu"), torch.bfloat16)
    assert variant is not private and type(variant.block_2) is type(private.block_2) is not type(
        descriptor.model.block_2
    )


# ---------------------------------------------------------------------------------------------
# SwinIR: gathered windows, stepped attention, in-place sums
# ---------------------------------------------------------------------------------------------


def swinir_pair(seed: int = 0, img_size: int = 32) -> tuple[torch.nn.Module, torch.nn.Module]:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    original = SwinIR(
        upscale=2,
        in_chans=3,
        img_size=img_size,
        window_size=8,
        img_range=1.0,
        depths=[2, 2],
        embed_dim=24,
        num_heads=[4, 4],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
        resi_connection="1conv",
    ).eval()
    with torch.no_grad():
        for parameter in original.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)  # the position bias table starts near zero
    prepared = copy.deepcopy(original)
    assert prepare(prepared) == 4  # every SwinTransformerBlock
    return original, prepared


@pytest.mark.parametrize("size", [(40, 56), (32, 32), (19, 45)])  # any size; the stored mask's own; padded inside
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_swinir_bitwise_equal_to_spandrel(size, mode, monkeypatch):
    original, prepared = swinir_pair()
    monkeypatch.setattr("tilewise.engine.compute.inference_forms.SWIN_WINDOWS_PER_STEP", 5)  # steps cross image borders
    x = torch.cat([photo(height=size[0], width=size[1]), photo("coffee", height=size[0], width=size[1])])
    with mode():
        expected = original(x)
        assert torch.equal(prepared(x), expected)


def test_swinir_under_bf16_autocast_equals_spandrel():
    """Autocast makes the attention scores bf16 and the mask fp32: the sums must promote as the
    original's do, not round into bf16 in place."""
    original, prepared = swinir_pair()
    x = photo(height=24, width=40)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(prepared(x), original(x))


def test_swinir_form_is_not_a_different_model():
    """A changed position bias or mask region must change the output (the test above can fail)."""
    original, prepared = swinir_pair()
    x = photo(height=40, width=40)
    with torch.no_grad():
        before = prepared(x)
        prepared.layers[0].residual_group.blocks[1].attn.relative_position_bias_table.add_(0.5)
        assert not torch.equal(prepared(x), before)


def test_swinir_training_and_tracing_use_the_original_forward():
    original, prepared = swinir_pair()
    x = photo(height=32, width=40)
    grads = []
    for model in (original, prepared):
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_swinir_in_plain_bf16_runs_at_any_size_and_matches_the_stored_size():
    """spandrel's SwinIR cast to bf16 fails at every size but its `img_size` (an fp32 mask meets
    bf16 scores); the form builds the mask in the model's dtype, as the stored buffer is. At the
    stored size both agree bit for bit; elsewhere the form stays within bf16 rounding of fp32."""
    original, prepared = swinir_pair()
    fp32 = copy.deepcopy(prepared)
    original, prepared = original.to(torch.bfloat16), prepared.to(torch.bfloat16)
    with torch.inference_mode():
        stored = photo(height=32, width=32).to(torch.bfloat16)
        assert torch.equal(prepared(stored), original(stored))
        other = photo(height=40, width=56)
        with pytest.raises(RuntimeError):
            original(other.to(torch.bfloat16))
        out = prepared(other.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert (out.float() - fp32(other)).abs().max().item() < 0.05
