"""Precision choice, per-(device, dtype) model copies, autocast immunity, OOM recognition."""

from __future__ import annotations

import pytest
import torch
from conftest import photo
from test_runner import ConvNet, describe
from tilewise.engine import TileSettings, UpscaleOptions, resolve_dtype, run_tiled, upscale
from tilewise.engine.compute.precision import (
    is_out_of_memory,
    model_on,
    private_copy,
    release_variants,
    resolve_device,
    same_device,
)


def test_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", describe(ConvNet()), torch.device("cpu")) == torch.float32


def _simulated_gpu(monkeypatch, name: str, capability: tuple[int, int], bf16: bool) -> None:
    """What torch.cuda answers about a GPU, for the plain policy's decisions (no GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


def test_auto_prefers_fp16_then_bf16_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    _simulated_gpu(monkeypatch, "NVIDIA GeForce RTX 3060", (8, 6), bf16=True)
    assert resolve_dtype("auto", describe(ConvNet()), cuda) == torch.float16
    assert resolve_dtype("auto", describe(ConvNet(), supports_half=False), cuda) == torch.bfloat16
    _simulated_gpu(monkeypatch, "Tesla P100", (6, 0), bf16=False)
    assert resolve_dtype("auto", describe(ConvNet()), cuda) == torch.float32
    assert resolve_dtype("auto", describe(ConvNet(), supports_half=False), cuda) == torch.float32


def test_auto_avoids_fp16_on_gtx_16xx(monkeypatch):
    """Turing GTX 16xx cards compute NaNs or black images in fp16 (ComfyUI avoids it too)."""
    _simulated_gpu(monkeypatch, "NVIDIA GeForce GTX 1660 SUPER", (7, 5), bf16=False)
    assert resolve_dtype("auto", describe(ConvNet()), torch.device("cuda")) == torch.float32
    _simulated_gpu(monkeypatch, "NVIDIA GeForce RTX 2060", (7, 5), bf16=False)
    assert resolve_dtype("auto", describe(ConvNet()), torch.device("cuda")) == torch.float16


def test_unsupported_precision_falls_back_to_fp32(caplog):
    transformer_like = describe(ConvNet(), supports_half=False, supports_bfloat16=False)
    assert resolve_dtype("fp16", transformer_like, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", transformer_like, torch.device("cpu")) == torch.float32
    assert "does not support fp16" in caplog.text
    assert resolve_dtype("bf16", describe(ConvNet()), torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("fp8", transformer_like, torch.device("cpu"))


def test_model_copies_leave_the_original_alone():
    descriptor = describe(ConvNet())
    original = descriptor.model
    copy16 = model_on(descriptor, torch.device("cpu"), torch.bfloat16)
    assert copy16 is not original and next(copy16.parameters()).dtype == torch.bfloat16
    assert next(original.parameters()).dtype == torch.float32
    assert model_on(descriptor, torch.device("cpu"), torch.bfloat16) is copy16  # cached
    assert model_on(descriptor, torch.device("cpu"), torch.float32) is original
    release_variants(descriptor)
    assert model_on(descriptor, torch.device("cpu"), torch.bfloat16) is not copy16


class _Tied(torch.nn.Module):
    """Tied weights, a float and an integer buffer: what a private copy must keep as they are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("mean", torch.rand(4))
        self.register_buffer("steps", torch.arange(4))


def test_private_copy_casts_each_weight_once_and_shares_nothing(monkeypatch):
    model = _Tied()
    expected = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    # the original's tensors are never deep-copied (a full-precision duplicate): only cast
    copied = []
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", lambda self, memo: copied.append(self))
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", lambda self, memo: copied.append(self))
    variant = private_copy(model, torch.device("cpu"), torch.bfloat16)
    monkeypatch.undo()
    assert copied == []
    state = variant.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    assert variant.b.weight is variant.a.weight  # still tied
    assert isinstance(variant.a.weight, torch.nn.Parameter) and variant.a.weight.requires_grad
    originals = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    assert not originals & {t.data_ptr() for t in list(variant.parameters()) + list(variant.buffers())}
    # same device and dtype: still a copy (an inference form may write its own weights)
    same = private_copy(model, torch.device("cpu"), torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(same.state_dict().values(), model.state_dict().values()))
    assert not originals & {t.data_ptr() for t in same.parameters()}
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_run_is_close_to_fp32():
    descriptor = describe(ConvNet())
    image = photo("astronaut", 100, 100, 32, 32)
    fp32 = run_tiled(descriptor, image)
    bf16 = run_tiled(descriptor, image, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert 0 < (fp32 - bf16).abs().max().item() < 0.05


def test_ambient_autocast_is_ignored():
    descriptor = describe(ConvNet())
    image = photo("astronaut", 100, 100, 32, 32)
    want = upscale(descriptor, image, UpscaleOptions(device="cpu", tiles=TileSettings(tile=-1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = upscale(descriptor, image, UpscaleOptions(device="cpu", tiles=TileSettings(tile=-1)))
    assert torch.equal(got, want)


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes")
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert not same_device(torch.device("cpu"), torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: checks fp16 on the GPU against fp32")
@pytest.mark.cuda
def test_cuda_fp16_matches_fp32():
    descriptor = describe(ConvNet())
    image = photo("astronaut", 100, 100, 64, 64)
    fp32 = upscale(descriptor, image, UpscaleOptions(device="cuda", precision="fp32"))
    fp16 = upscale(descriptor, image, UpscaleOptions(device="cuda", precision="fp16"))
    assert (fp32 - fp16).abs().max().item() < 5e-3


def test_channels_last_for_conv_nets_only():
    from model_zoo import ZOO
    from tilewise.engine import describe_state_dict
    from tilewise.engine.compute.precision import prefers_channels_last

    assert prefers_channels_last(describe_state_dict(ZOO["Compact"].state_dict(seed=0)).model)
    assert prefers_channels_last(describe_state_dict(ZOO["ESRGAN"].state_dict(seed=0)).model)
    assert not prefers_channels_last(describe_state_dict(ZOO["SwinIR"].state_dict(seed=0)).model)


def test_a_model_may_declare_its_layout():
    from tilewise.engine.compute.precision import prefers_channels_last

    class Hybrid(ConvNet):  # a conv net that declares NCHW, and a Linear model that declares NHWC
        prefers_channels_last = False

    tokens = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Linear(3, 3))
    assert prefers_channels_last(ConvNet()) and not prefers_channels_last(Hybrid())
    assert not prefers_channels_last(tokens)
    tokens.prefers_channels_last = True
    assert prefers_channels_last(tokens)


def test_channels_last_changes_nothing_but_speed():
    class Spy(ConvNet):
        def forward(self, x):
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return super().forward(x)

    spy = Spy()
    spy.layouts = []
    descriptor = describe(spy)
    image = photo("astronaut", 100, 100, 40, 48)
    nhwc = run_tiled(descriptor, image, settings=TileSettings(tile=24, channels_last=True))
    nchw = run_tiled(descriptor, image, settings=TileSettings(tile=24, channels_last=False))
    assert (nhwc - nchw).abs().max().item() <= 1e-5
    assert any(spy.layouts) and not all(spy.layouts)  # NHWC input in the first run only
    assert all(p.is_contiguous() for p in descriptor.model.parameters())  # the shared model is untouched


class MixesDtypes(ConvNet):
    """Like spandrel's SwinIR in bf16: an fp32 buffer meets the cast activations in a matmul,
    which fails when the model is cast and works under autocast."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mix", torch.eye(3) + 0.01, persistent=False)

    def forward(self, x):
        mix = self.mix.float()  # fp32 whatever the model was cast to, as SwinIR's mask
        return torch.matmul(super().forward(x).permute(0, 2, 3, 1), mix).permute(0, 3, 1, 2)


def test_a_model_that_fails_when_cast_runs_under_autocast(caplog):
    descriptor = describe(MixesDtypes())
    image = photo("astronaut", 100, 100, 40, 40)
    fp32 = run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3))
    got = run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3), dtype=torch.bfloat16)
    assert "continuing with torch.bfloat16 autocast" in caplog.text
    error = (got - fp32).abs().max().item()
    assert 0 < error < 0.02  # bf16 rounding of the convolutions: autocast was really on
    caplog.clear()
    again = run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3), dtype=torch.bfloat16)
    assert caplog.text == "" and torch.equal(again, got)  # remembered: straight to autocast


def test_a_model_that_fails_in_low_precision_finishes_in_fp32(caplog):
    class NoBf16(ConvNet):
        def forward(self, x):
            if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
                raise RuntimeError("expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16")
            return super().forward(x)

    descriptor = describe(NoBf16())
    image = photo("astronaut", 100, 100, 40, 40)
    got = run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3), dtype=torch.bfloat16)
    assert torch.equal(got, run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3)))
    assert "autocast" in caplog.text and "continuing in fp32" in caplog.text
    caplog.clear()
    run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=3), dtype=torch.bfloat16)
    assert "continuing" not in caplog.text  # remembered: the next run goes straight to fp32


def test_swinir_runs_in_plain_bf16_through_its_inference_form(caplog):
    """spandrel's SwinIR cast to bf16 fails (its fp32 mask; the fallback above covers such
    models); the engine's inference form builds the mask in the model's dtype, so the run
    stays in bf16 with no fallback, within bf16 rounding of fp32."""
    from model_zoo import ZOO
    from tilewise.engine import describe_state_dict
    from tilewise.engine.compute.precision import run_mode

    descriptor = describe_state_dict(ZOO["SwinIR"].state_dict(seed=0))
    image = photo("coffee", 0, 0, 40, 40)
    fp32 = run_tiled(descriptor, image, settings=TileSettings(tile=-1))
    bf16 = run_tiled(descriptor, image, settings=TileSettings(tile=-1), dtype=torch.bfloat16)
    assert run_mode(descriptor, torch.bfloat16) == (torch.bfloat16, None)
    assert "continuing" not in caplog.text
    assert 0 < (bf16 - fp32).abs().max().item() < 0.05


def test_compile_is_opt_in_cached_and_sees_one_batch_shape(monkeypatch):
    compiled = []

    def fake_compile(module, dynamic=None):
        compiled.append((module, dynamic))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = ConvNet()
    descriptor = describe(model)
    image = photo("chelsea", 0, 0, 70, 70)
    plain = run_tiled(descriptor, image, settings=TileSettings(tile=32, pad=3, batch=3))
    assert compiled == []
    model.calls.clear()
    for _ in range(2):
        got = run_tiled(descriptor, image, settings=TileSettings(tile=32, pad=3, batch=3, compile=True))
        assert torch.equal(got, plain)
    assert len(compiled) == 1 and compiled[0][1] is False  # compiled once, static shapes
    assert {shape[0] for shape in model.calls} == {3}  # the last, smaller group was padded
