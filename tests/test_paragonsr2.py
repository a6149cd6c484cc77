"""ParagonSR2: detection from keys, strict loading, and outputs against the upstream test vectors.

The vectors (a subset bundled in `tests/fixtures/`, or the full set in `$PARAGONSR2_FIXTURES`;
see `reference_vectors`) were produced by the upstream code on seeded random weights; every
output must match within 1e-4 in fp32 on CPU.
"""

from __future__ import annotations

import functools
import json
import threading

import pytest
import torch
from conftest import PARAGONSR2_FIXTURES as FIXTURES
from safetensors.torch import load_file
from spandrel import MAIN_REGISTRY, SizeRequirements
from tilewise.archs import paragonsr2
from tilewise.archs.base import LoadHints, RecognisedButUnsupportedError
from tilewise.archs.paragonsr2 import (
    ARCH_SUPPORTS,
    ParagonSR2,
    ParagonSR2Arch,
    ParagonSR2V5Arch,
    WindowAttention,
    classify,
)
from tilewise.archs.windows import plain_forms

TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _manifest(name: str) -> list[dict]:
    path = FIXTURES / name
    return json.loads(path.read_text()) if path.is_file() else []


DUAL = _manifest("manifest.json")
V5 = _manifest("manifest_v5.json")


@functools.lru_cache(maxsize=None)
def _weights(file: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / file))


def weights(file: str) -> dict[str, torch.Tensor]:
    """A fresh dict (tests may edit it) sharing the cached tensors."""
    return dict(_weights(file))


@functools.lru_cache(maxsize=None)
def vectors(file: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / file))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def run(model: torch.nn.Module, *args, **kwargs):
    with torch.inference_mode():
        return model.eval()(*args, **kwargs)


def by_id(entries: list[dict]) -> list:
    return [pytest.param(e, id=e["file"].removesuffix(".safetensors")) for e in entries]


# ---------------------------------------------------------------------------------------------
# Fixtures: detection and outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", by_id(DUAL))
def test_dual_path_detected_with_manifest_hyperparameters(entry):
    sd = weights(entry["file"])
    assert len(sd) == entry["tensors"]
    assert ParagonSR2Arch().detect(sd)
    assert not ParagonSR2V5Arch().detect(sd)
    descriptor = ParagonSR2Arch().load(sd)
    model = descriptor.model
    assert isinstance(model, ParagonSR2)
    assert model.variant == entry["variant"]
    assert descriptor.scale == model.scale == entry["scale"]
    assert sum(p.numel() for p in model.parameters()) == entry["params"]
    assert model.upsampler_alpha == 0.0  # not stored; the fidelity releases' value is the default
    assert model.layer_scale == ("nogamma" not in entry["file"])
    assert entry["variant"] in descriptor.tags and f"{model.num_feat}nf" in descriptor.tags


@pytest.mark.parametrize("entry", by_id(DUAL))
def test_dual_path_outputs_match_upstream(entry):
    sd, io = weights(entry["file"]), vectors(entry["io_file"])
    arch = ParagonSR2Arch()
    for alpha in entry["alphas"]:
        model = arch.load(sd, LoadHints(upsampler_alpha=alpha)).model
        assert max_error(run(model, io["input"]), io[f"output_alpha{alpha}"]) <= TOLERANCE, f"alpha {alpha}"

    if "video_output1" not in io:  # the bundled pro vectors keep no video outputs (the full set does)
        return
    model = arch.load(sd, LoadHints(upsampler_alpha=entry["video_alpha"])).model
    out1, feat1 = run(model, io["input"], feature_tap=True)
    assert max_error(out1, io["video_output1"]) <= TOLERANCE
    if "video_feat1" in io:  # the bundled photo vectors keep the outputs only: frame 2 then builds on our feature
        assert max_error(feat1, io["video_feat1"]) <= TOLERANCE
    out2, feat2 = run(
        model,
        io["input_frame2"],
        feature_tap=True,
        prev_feat=io.get("video_feat1", feat1),
        alpha=entry["temporal_alpha"],
    )
    assert max_error(out2, io["video_output2"]) <= TOLERANCE
    if "video_feat2" in io:
        assert max_error(feat2, io["video_feat2"]) <= TOLERANCE


def test_the_bundled_vectors_cover_every_variant_and_video_feedback():
    """What `reference_vectors` must keep: realtime, stream, photo and pro outputs, the v5
    family, a file without LayerScale gammas, and video feedback with its features."""
    assert {e["variant"] for e in DUAL} >= {"realtime", "stream", "photo", "pro"}
    assert V5 and any("nogamma" in e["file"] for e in DUAL)
    with_video = {e["variant"] for e in DUAL if "video_output2" in vectors(e["io_file"])}
    assert with_video >= {"realtime", "stream", "photo"}
    assert any("video_feat2" in vectors(e["io_file"]) for e in DUAL)


@pytest.mark.parametrize(
    "entry", by_id([e for e in DUAL if "video_output1" in vectors(e["io_file"])])
)  # bundled pro: no video outputs
def test_dual_path_matches_upstream_through_the_engine_in_nhwc(entry):
    """The engine feeds ParagonSR2 channels-last input (its declared preference); the fixture
    outputs must still hold, including the video feature, which comes back in NHWC memory."""
    from tilewise.engine.compute.precision import prefers_channels_last

    sd, io = weights(entry["file"]), vectors(entry["io_file"])
    descriptor = ParagonSR2Arch().load(sd, LoadHints(upsampler_alpha=entry["video_alpha"]))
    assert prefers_channels_last(descriptor.model)
    nhwc = io["input"].contiguous(memory_format=torch.channels_last)
    out1, feat1 = run(descriptor.model, nhwc, feature_tap=True)
    assert max_error(out1, io["video_output1"]) <= TOLERANCE
    out2, _ = run(
        descriptor.model,
        io["input_frame2"].contiguous(memory_format=torch.channels_last),
        feature_tap=True,
        prev_feat=feat1,
        alpha=entry["temporal_alpha"],
    )
    assert max_error(out2, io["video_output2"]) <= TOLERANCE


@pytest.mark.parametrize("entry", by_id(DUAL))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_in_place_residuals_equal_the_plain_expressions_bitwise(entry, layout, monkeypatch):
    """Without autograd the blocks write `x + gamma * update`, the norm and the GELU into their
    temporaries; with autograd on they run the plain expressions. Both give the same bits."""
    sd, io = weights(entry["file"]), vectors(entry["io_file"])
    model = ParagonSR2Arch().load(sd, LoadHints(upsampler_alpha=entry["video_alpha"])).model.eval()
    x = io["input"].contiguous(memory_format=layout)
    plain = model(x, feature_tap=True)  # grad enabled: the out-of-place path
    assert plain[0].requires_grad
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            fast = model(x, feature_tap=True)
        assert all(torch.equal(a, b) for a, b in zip(plain, fast))


def test_plain_forms_run_the_upstream_shaped_code_in_this_thread_only(monkeypatch):
    """Inside `plain_forms` an inference forward is the autograd forward, bit for bit, and the
    window gathers are not used; another thread meanwhile keeps the fast forms."""
    calls = []
    gather = paragonsr2.to_windows
    monkeypatch.setattr(
        paragonsr2, "to_windows", lambda *args: calls.append(threading.current_thread()) or gather(*args)
    )
    model = ParagonSR2Arch().load(weights("paragonsr2_photo_x2.safetensors")).model.eval()
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    plain = model(x).detach()
    with torch.inference_mode(), plain_forms():
        assert torch.equal(model(x), plain)
        assert not calls
        other = threading.Thread(target=lambda: torch.inference_mode()(model)(x))
        other.start()
        other.join()
        assert calls and set(calls) == {other}
    with torch.inference_mode():
        model(x)
    assert threading.current_thread() in calls


@pytest.mark.parametrize("entry", by_id(V5))
def test_v5_detected_and_outputs_match_upstream(entry):
    sd, io = weights(entry["file"]), vectors(entry["io_file"])
    assert len(sd) == entry["tensors"]
    assert ParagonSR2V5Arch().detect(sd)
    assert not ParagonSR2Arch().detect(sd)
    descriptor = ParagonSR2V5Arch().load(sd)
    model = descriptor.model
    assert model.variant == entry["variant"] and entry["variant"] in descriptor.tags
    assert descriptor.scale == entry["scale"]
    assert sum(p.numel() for p in model.parameters()) == entry["params"]
    assert max_error(run(model, io["input"]), io["output"]) <= TOLERANCE


def test_spandrel_claims_none_of_the_fixture_files():
    for entry in DUAL + V5:
        sd = weights(entry["file"])
        claimed = [s.architecture.id for s in MAIN_REGISTRY.architectures("detection") if s.detect(sd)]
        assert claimed == [], entry["file"]


def test_registry_with_arch_supports_detects_both_families():
    registry = MAIN_REGISTRY.copy()
    registry.add(*ARCH_SUPPORTS)
    assert registry.load(weights("paragonsr2_realtime_x2_nogamma.safetensors")).architecture.id == "ParagonSR2"
    assert registry.load(weights("paragonsr2v5_nano_x2.safetensors")).architecture.id == "ParagonSR2v5"
    assert [s.architecture.id for s in ARCH_SUPPORTS] == ["ParagonSR2", "ParagonSR2v5"]


# ---------------------------------------------------------------------------------------------
# Loading rules
# ---------------------------------------------------------------------------------------------


def test_descriptor_metadata():
    descriptor = ParagonSR2Arch().load(weights("paragonsr2_stream_x2.safetensors"))
    assert descriptor.purpose == "SR"
    assert descriptor.supports_half is False  # spec §7: fp16 only as an opt-in with fp32 fallback
    assert descriptor.supports_bfloat16 is True
    assert (descriptor.input_channels, descriptor.output_channels, descriptor.scale) == (3, 3, 2)
    assert descriptor.size_requirements == SizeRequirements()
    assert descriptor.tags[:2] == ["stream", "32nf"]
    model = descriptor.model
    assert model.supports_temporal is True and model.num_feat == 32 and model.temporal_alpha == 0.2
    v5 = ParagonSR2V5Arch().load(weights("paragonsr2v5_nano_x2.safetensors"))
    assert (v5.purpose, v5.supports_half, v5.supports_bfloat16, v5.input_channels, v5.output_channels) == (
        "SR",
        False,
        True,
        3,
        3,
    )
    assert v5.model.supports_temporal is False


@pytest.mark.parametrize(
    "file, edit",
    [
        ("paragonsr2_realtime_x2.safetensors", "extra"),
        ("paragonsr2_realtime_x2.safetensors", "missing"),
        ("paragonsr2_realtime_x2.safetensors", "one-gamma-missing"),
        ("paragonsr2_realtime_x2_nogamma.safetensors", "one-gamma-added"),
        ("paragonsr2_photo_x2.safetensors", "one-attention-missing"),
        ("paragonsr2v5_nano_x2.safetensors", "extra"),
        ("paragonsr2v5_nano_x2.safetensors", "missing"),
    ],
)
def test_loading_is_strict(file, edit):
    sd = weights(file)
    if edit == "extra":
        sd["conv_in.unexpected"] = torch.zeros(1)
    elif edit == "missing":
        del sd["conv_out.bias"]
    elif edit == "one-gamma-missing":
        del sd["body.0.blocks.2.scale.gamma"]
    elif edit == "one-gamma-added":
        sd["body.0.blocks.1.scale.gamma"] = torch.ones(1, 16, 1, 1)
    elif edit == "one-attention-missing":
        del sd["body.1.blocks.2.attn.proj.bias"]
    arch = ParagonSR2V5Arch() if "v5" in file else ParagonSR2Arch()
    assert arch.detect(sd)
    with pytest.raises(RuntimeError, match="state_dict"):
        arch.load(sd)


def test_photo_without_attention_keys_loads_as_export_safe():
    sd = {k: v for k, v in weights("paragonsr2_photo_x2.safetensors").items() if ".attn" not in k}
    assert len(sd) == 159
    descriptor = ParagonSR2Arch().load(sd)
    model = descriptor.model
    assert model.has_attention is False and "no-attention" in descriptor.tags
    assert not any(isinstance(m, WindowAttention) for m in model.modules())
    assert model.receptive_radius == 1 + 16 + 3  # without attention photo is purely convolutional


def test_upsampler_alpha_hint_overrides_the_default():
    file, io = "paragonsr2_realtime_x2.safetensors", vectors("paragonsr2_realtime_x2.io.safetensors")
    plain = ParagonSR2Arch().load(weights(file)).model
    hinted = ParagonSR2Arch().load(weights(file), LoadHints(upsampler_alpha=0.4)).model
    assert (plain.upsampler_alpha, hinted.upsampler_alpha) == (0.0, 0.4)
    assert max_error(io["output_alpha0.0"], io["output_alpha0.4"]) > 1e-3  # the alphas are distinguishable
    assert max_error(run(plain, io["input"]), io["output_alpha0.0"]) <= TOLERANCE
    assert max_error(run(hinted, io["input"]), io["output_alpha0.4"]) <= TOLERANCE
    plain.upsampler_alpha = 0.4  # and it can be changed after loading
    assert max_error(run(plain, io["input"]), io["output_alpha0.4"]) <= TOLERANCE

    v5_file, v5_io = "paragonsr2v5_nano_x2.safetensors", vectors("paragonsr2v5_nano_x2.io.safetensors")
    factory = ParagonSR2V5Arch().load(weights(v5_file)).model
    assert factory.upsampler_alpha == 0.4  # the nano factory default the fixture was made with
    other = ParagonSR2V5Arch().load(weights(v5_file), LoadHints(upsampler_alpha=0.0)).model
    assert other.upsampler_alpha == 0.0
    assert max_error(run(other, v5_io["input"]), v5_io["output"]) > 1e-3


# ---------------------------------------------------------------------------------------------
# Recognised but unsupported layouts
# ---------------------------------------------------------------------------------------------

_DUAL_KEYS = [
    "detail_gain",
    "base.blur.h.weight",
    "base.sharp.h.weight",
    "conv_in.weight",
    "conv_mid.weight",
    "up.0.weight",
    "conv_out.weight",
]

UNSUPPORTED = {
    "munet": (
        [
            "in_conv.weight",
            "in_conv.bias",
            "down_blocks.0.0.parametrizations.weight.original",
            "mid_conv.0.parametrizations.weight.original",
            "up_blocks.0.magic_upsample.sharpen.conv_h.weight",
            "up_blocks.0.post_upsample_conv.parametrizations.weight.original",
            "out_conv.parametrizations.weight.original",
        ],
        "discriminator",
    ),
    "v6-v8": (
        [
            "global_detail_gain",
            "base_upsampler.sharpen.conv_h.weight",
            "conv_in.weight",
            "body.0.blocks.0.net.0.weight",
            "conv_fuse.weight",
            "detail_upsampler.up_conv.weight",
            "conv_out.weight",
        ],
        "v6-v8",
    ),
    "fork": (
        [
            "conv_in.weight",
            "body.0.blocks.0.context.dwconv_hw.weight",
            "body.0.blocks.0.ls1.gamma",
            "body.0.blocks.0.transformer.kernel_generator.predictor.1.weight",
            "conv_fuse.weight",
            "magic_upsampler.sharpen.conv_h.weight",
            "upsampler.weight",
            "conv_out.weight",
        ],
        "fork",
    ),
    "paragonsr-v1": (
        [
            "conv_in.weight",
            "body.0.blocks.0.norm1.weight",
            "body.0.blocks.0.context.dwconv_hw.weight",
            "body.0.blocks.0.ls1.gamma",
            "body.0.blocks.0.transformer.project_in_g.weight",
            "conv_fuse.weight",
            "upsampler.0.weight",
            "conv_out.weight",
        ],
        "ParagonSR \\(v1\\)",
    ),
    "ultimate": ([*_DUAL_KEYS, "body.0.blocks.0.gated_conv.conv1.weight", "final_norm.weight"], "ultimate"),
    "atd-pro": ([*_DUAL_KEYS, "body.0.layers.0.wqkv.weight"], "91de511"),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_related_layouts_are_recognised_and_refused(kind):
    keys, message = UNSUPPORTED[kind]
    sd = {k: torch.zeros(1) for k in keys}
    assert classify(sd) == kind
    assert ParagonSR2Arch().detect(sd) and not ParagonSR2V5Arch().detect(sd)
    with pytest.raises(RecognisedButUnsupportedError, match=message):
        ParagonSR2Arch().load(sd)


def test_damaged_dual_path_files_fail_with_a_clear_error():
    sd = weights("paragonsr2_realtime_x2.safetensors")
    sd["up.0.weight"] = torch.zeros(50, 16, 3, 3)  # 50 / 16 is not a square
    with pytest.raises(RecognisedButUnsupportedError, match="up.0"):
        ParagonSR2Arch().load(sd)
    sd = {k: v for k, v in weights("paragonsr2_realtime_x2.safetensors").items() if not k.startswith("body.")}
    sd["body.0.blocks.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(RecognisedButUnsupportedError, match="unknown block type"):
        ParagonSR2Arch().load(sd)


SPANDREL_SAMPLES = (
    "Compact",
    "ESRGAN",
    "OmniSR",
    "PLKSR",
    "DITN",
    "SeemoRe",
    "ATD",
    "CRAFT",
    "DRUNet",
    "FBCNN",
    "LaMa",
    "MoESR",
)


def _spandrel_state_dicts() -> dict[str, dict]:
    """State dicts of spandrel models built with default arguments (on the meta device: keys only)."""
    import importlib

    sds = {}
    with torch.device("meta"):
        for arch_id in SPANDREL_SAMPLES:
            network = getattr(importlib.import_module(f"spandrel.architectures.{arch_id}"), arch_id)
            sds[arch_id] = network().state_dict()
    sds["RealCUGAN"] = importlib.import_module("spandrel.architectures.RealCUGAN").UpCunet2x().state_dict()
    return sds


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.meshgrid notices from spandrel's constructors
def test_unrelated_models_are_not_claimed():
    from tilewise.archs.magic_kernel import MagicKernelSharp2021Upsample

    others = _spandrel_state_dicts()
    others["MagicKernelSharp2021"] = MagicKernelSharp2021Upsample(3, 2).state_dict()
    for name, sd in others.items():
        if name in MAIN_REGISTRY:
            assert MAIN_REGISTRY[name].detect(sd), name  # a faithful sample of that architecture
        assert classify(sd) is None, name
        assert not any(support.detect(sd) for support in ARCH_SUPPORTS), name


# ---------------------------------------------------------------------------------------------
# Any input size, tiling hints, video interface, precision
# ---------------------------------------------------------------------------------------------


def _naive_window_attention(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-window attention written out by coordinates: zero padding, cyclic shift, no mask."""
    b, h, w, c = x.shape
    ws, shift, heads = attn.window_size, attn.shift_size, attn.num_heads
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    padded = torch.zeros(b, hp, wp, c)
    padded[:, :h, :w] = x
    out = torch.zeros_like(padded)
    for top in range(0, hp, ws):
        for left in range(0, wp, ws):
            rows = torch.tensor([(top + i + shift) % hp for i in range(ws) for _ in range(ws)])
            cols = torch.tensor([(left + j + shift) % wp for _ in range(ws) for j in range(ws)])
            tokens = padded[:, rows, cols]  # (B, ws*ws, C)
            q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
            split = lambda t: t.reshape(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            weights_ = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
            mixed = (weights_ @ v).transpose(1, 2).reshape(b, -1, c)
            out[:, rows, cols] = mixed @ attn.proj.weight.T + attn.proj.bias
    return out[:, :h, :w]


@pytest.mark.parametrize("shift", [0, 4])
def test_window_attention_pads_shifts_and_crops_like_the_reference(shift):
    torch.manual_seed(shift)
    attn = WindowAttention(16, num_heads=4, window_size=8, shift_size=shift)
    x = torch.randn(2, 13, 19, 16)
    with torch.no_grad():
        assert max_error(attn(x), _naive_window_attention(attn, x)) <= 1e-5


@pytest.mark.parametrize("shape", [(2, 13, 19), (1, 16, 32), (1, 5, 7), (1, 33, 17)])
@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_gathered_window_attention_equals_the_plain_form_bitwise(shape, shift, mode):
    """Without autograd, padding, shift and partition are one gather each way; with it, the
    plain pad/roll/reshape form runs. Sizes cover no padding, padding on one or both sides and
    an image smaller than one window."""
    torch.manual_seed(shift + shape[1])
    attn = WindowAttention(16, num_heads=4, window_size=8, shift_size=shift).eval()
    x = torch.randn(shape[0], shape[1], shape[2], 16)
    plain = attn(x)
    assert plain.requires_grad
    with mode():
        gathered = attn(x)
        assert torch.equal(gathered, plain)
        assert torch.equal(attn(x.transpose(1, 2).contiguous().transpose(1, 2)), plain)  # strided input


@pytest.mark.parametrize("file", ["paragonsr2_photo_x2.safetensors", "paragonsr2_pro_x2.safetensors"])
def test_attention_variants_run_at_any_size(file):
    descriptor = ParagonSR2Arch().load(weights(file))
    model = descriptor.model
    assert descriptor.size_requirements == SizeRequirements()
    assert model.receptive_radius is None
    assert model.min_tile_margin >= model.window_size == 16
    assert model.receptive_hint >= model.min_tile_margin
    x = torch.rand(2, 3, 21, 27, generator=torch.Generator().manual_seed(0))
    batch = run(model, x)
    assert batch.shape == (2, 3, 42, 54) and torch.isfinite(batch).all()
    assert max_error(run(model, x[1:]), batch[1:]) <= 1e-5
    tiny = run(model, x[:1, :, :5, :7])
    assert tiny.shape == (1, 3, 10, 14) and torch.isfinite(tiny).all()


@pytest.mark.parametrize(
    "file", ["paragonsr2_realtime_x2.safetensors", "paragonsr2_stream_x2.safetensors", "photo-without-attention"]
)
@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_declared_receptive_radius_is_exact(file, alpha):
    # Gradient support in float64: the farthest pixels' influence (~1e-25 for stream) is far
    # below what a perturbation of the output could show.
    if file == "photo-without-attention":
        sd = {k: v for k, v in weights("paragonsr2_photo_x2.safetensors").items() if ".attn" not in k}
    else:
        sd = weights(file)
    model = ParagonSR2Arch().load(sd, LoadHints(upsampler_alpha=alpha)).model.double().eval()
    radius, s = model.receptive_radius, model.scale
    assert radius == model.min_tile_margin == model.receptive_hint
    size = 2 * radius + 9
    centre = size // 2
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    image.requires_grad_(True)
    model(image)[..., centre * s : (centre + 1) * s, centre * s : (centre + 1) * s].sum().backward()
    support = image.grad.abs().sum(dim=(0, 1))
    rows = torch.nonzero(support.sum(dim=1)).flatten() - centre
    cols = torch.nonzero(support.sum(dim=0)).flatten() - centre
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (
        -radius,
        radius,
        -radius,
        radius,
    )


def test_video_first_frame_conventions():
    io = vectors("paragonsr2_stream_x2.io.safetensors")
    model = ParagonSR2Arch().load(weights("paragonsr2_stream_x2.safetensors")).model
    _, fresh = run(model, io["input"], feature_tap=True)
    _, zeroed = run(model, io["input"], feature_tap=True, prev_feat=model.zero_feature(io["input"]))
    assert max_error(zeroed, 0.8 * fresh) <= 1e-6  # the TensorRT pipeline's first frame
    assert max_error(fresh, io["video_feat1"]) <= TOLERANCE  # None: no blending (PyTorch convention)
    with pytest.raises(ValueError, match="prev_feat"):
        run(model, io["input"], prev_feat=torch.zeros(1, 16, 37, 53))


def test_bfloat16_stays_close_to_fp32():
    io = vectors("paragonsr2_realtime_x2.io.safetensors")
    model = ParagonSR2Arch().load(weights("paragonsr2_realtime_x2.safetensors")).model.to(torch.bfloat16)
    out = run(model, io["input"].to(torch.bfloat16)).float()
    assert max_error(out, io["output_alpha0.0"]) < 0.05
