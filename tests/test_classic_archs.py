"""ESPCN, SRCNN, FSRCNN, EDSR and RDN: detection, hyper-parameters, hints and exact forward passes.

Each state dict is written here from the public implementation's key names and shapes (seeded
random weights), saved to a real .pth and read back with `torch.load(weights_only=True)`. The
outputs are compared with plain `torch.nn.functional` re-computations of the public forward
passes, written against those key names, not with the modules under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import spandrel
import torch
import torch.nn.functional as F
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.RCAN import RCAN
from spandrel.architectures.SPAN import SPAN
from tilewise.archs.base import HintNeededError, LoadHints
from tilewise.archs.classic import ARCH_SUPPORTS, EDSRArch, ESPCNArch, FSRCNNArch, RDNArch, SRCNNArch, receptive_radius

DIV2K_MEAN = torch.tensor([0.4488, 0.4371, 0.4040])
TOL = 1e-5

# ---------------------------------------------------------------------------------------------
# State dicts in the public key layouts
# ---------------------------------------------------------------------------------------------


class Weights:
    """Seeded random weights, scaled by fan-in so deep nets keep activations near 1."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def rand(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * std

    def conv(self, prefix: str, cout: int, cin: int, k: int) -> None:
        self.sd[f"{prefix}.weight"] = self.rand(cout, cin, k, k, std=1.0 / math.sqrt(cin * k * k))
        self.sd[f"{prefix}.bias"] = self.rand(cout, std=0.1)

    def prelu(self, key: str, n: int) -> None:
        self.sd[key] = 0.25 + self.rand(n, std=0.05)


def espcn_sd(scale: int, channels: int = 1) -> dict[str, torch.Tensor]:
    w = Weights(1)
    w.conv("first_part.0", 64, channels, 5)
    w.conv("first_part.2", 32, 64, 3)
    w.conv("last_part.0", channels * scale**2, 32, 3)
    return w.sd


def srcnn_sd(channels: int = 1, k2: int = 5) -> dict[str, torch.Tensor]:
    w = Weights(2)
    w.conv("conv1", 64, channels, 9)
    w.conv("conv2", 32, 64, k2)
    w.conv("conv3", channels, 32, 5)
    return w.sd


def fsrcnn_sd(d: int = 12, s: int = 5, m: int = 2, channels: int = 1) -> dict[str, torch.Tensor]:
    w = Weights(3)
    w.conv("first_part.0", d, channels, 5)
    w.prelu("first_part.1.weight", d)
    w.conv("mid_part.0", s, d, 1)
    w.prelu("mid_part.1.weight", s)
    for i in range(m):
        w.conv(f"mid_part.{2 * i + 2}", s, s, 3)
        w.prelu(f"mid_part.{2 * i + 3}.weight", s)
    w.conv(f"mid_part.{2 * m + 2}", d, s, 1)
    w.prelu(f"mid_part.{2 * m + 3}.weight", d)
    w.sd["last_part.weight"] = w.rand(d, channels, 9, 9, std=1.0 / math.sqrt(d * 9))  # ConvTranspose2d: (in, out, k, k)
    w.sd["last_part.bias"] = w.rand(channels, std=0.1)
    return w.sd


def edsr_sd(n_resblocks: int, n_feats: int, scale: int, rgb_range: float = 255.0) -> dict[str, torch.Tensor]:
    w = Weights(4)
    # common.MeanShift: weight eye(3)/std, bias sign * rgb_range * mean / std, with std = 1
    w.sd["sub_mean.weight"] = torch.eye(3).view(3, 3, 1, 1)
    w.sd["sub_mean.bias"] = -rgb_range * DIV2K_MEAN
    w.sd["add_mean.weight"] = torch.eye(3).view(3, 3, 1, 1)
    w.sd["add_mean.bias"] = rgb_range * DIV2K_MEAN
    w.conv("head.0", n_feats, 3, 3)
    for i in range(n_resblocks):
        w.conv(f"body.{i}.body.0", n_feats, n_feats, 3)
        w.conv(f"body.{i}.body.2", n_feats, n_feats, 3)
    w.conv(f"body.{n_resblocks}", n_feats, n_feats, 3)
    factors = [3] if scale == 3 else [2] * int(math.log2(scale))
    for j, f in enumerate(factors):
        w.conv(f"tail.0.{2 * j}", f * f * n_feats, n_feats, 3)
    w.conv("tail.1", 3, n_feats, 3)
    return w.sd


def rdn_yjn_sd(G0: int, D: int, C: int, scale: int, channels: int = 3) -> dict[str, torch.Tensor]:
    """yjn870/RDN-pytorch models.py (growth rate G == num_features G0)."""
    w = Weights(5)
    G = G0
    w.conv("sfe1", G0, channels, 3)
    w.conv("sfe2", G0, G0, 3)
    for i in range(D):
        cin = G0 if i == 0 else G
        for c in range(C):
            w.conv(f"rdbs.{i}.layers.{c}.conv", G, cin + c * G, 3)
        w.conv(f"rdbs.{i}.lff", G, cin + C * G, 1)
    w.conv("gff.0", G0, G * D, 1)
    w.conv("gff.1", G0, G0, 3)
    factors = [2, 2] if scale == 4 else [scale]
    for j, f in enumerate(factors):
        w.conv(f"upscale.{2 * j}", G0 * f * f, G0, 3)
    w.conv("output", channels, G0, 3)
    return w.sd


def rdn_edsr_sd(G0: int, G: int, D: int, C: int, scale: int, k: int = 3, channels: int = 3) -> dict[str, torch.Tensor]:
    """EDSR-PyTorch src/model/rdn.py (RDNkSize k for SFENet/GFF/UPNet, 3x3 inside the blocks)."""
    w = Weights(6)
    w.conv("SFENet1", G0, channels, k)
    w.conv("SFENet2", G0, G0, k)
    for i in range(D):
        for c in range(C):
            w.conv(f"RDBs.{i}.convs.{c}.conv.0", G, G0 + c * G, 3)
        w.conv(f"RDBs.{i}.LFF", G0, G0 + C * G, 1)
    w.conv("GFF.0", G0, D * G0, 1)
    w.conv("GFF.1", G0, G0, k)
    if scale == 4:
        w.conv("UPNet.0", G * 4, G0, k)
        w.conv("UPNet.2", G * 4, G, k)
        w.conv("UPNet.4", channels, G, k)
    else:
        w.conv("UPNet.0", G * scale * scale, G0, k)
        w.conv("UPNet.2", channels, G, k)
    return w.sd


# ---------------------------------------------------------------------------------------------
# Functional reference forwards (the public code's forward passes, by key name)
# ---------------------------------------------------------------------------------------------


def conv(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    weight = sd[f"{prefix}.weight"]
    return F.conv2d(x, weight, sd[f"{prefix}.bias"], padding=weight.shape[-1] // 2)


def ref_espcn(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    x = torch.tanh(conv(sd, "first_part.0", x))
    x = torch.tanh(conv(sd, "first_part.2", x))
    return F.pixel_shuffle(conv(sd, "last_part.0", x), scale)


def ref_srcnn(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    x = F.relu(conv(sd, "conv1", x))
    x = F.relu(conv(sd, "conv2", x))
    return conv(sd, "conv3", x)


def ref_fsrcnn(sd: dict, x: torch.Tensor, scale: int, m: int) -> torch.Tensor:
    x = F.prelu(conv(sd, "first_part.0", x), sd["first_part.1.weight"])
    for i in range(m + 2):
        x = F.prelu(conv(sd, f"mid_part.{2 * i}", x), sd[f"mid_part.{2 * i + 1}.weight"])
    return F.conv_transpose2d(
        x, sd["last_part.weight"], sd["last_part.bias"], stride=scale, padding=4, output_padding=scale - 1
    )


def ref_edsr(
    sd: dict, x: torch.Tensor, n_resblocks: int, factors: list[int], res_scale: float, rgb_range: float
) -> torch.Tensor:
    x = F.conv2d(x * rgb_range, sd["sub_mean.weight"], sd["sub_mean.bias"])
    x = conv(sd, "head.0", x)
    h = x
    for i in range(n_resblocks):
        r = conv(sd, f"body.{i}.body.2", F.relu(conv(sd, f"body.{i}.body.0", h)))
        h = h + r * res_scale
    h = conv(sd, f"body.{n_resblocks}", h) + x
    for j, f in enumerate(factors):
        h = F.pixel_shuffle(conv(sd, f"tail.0.{2 * j}", h), f)
    h = conv(sd, "tail.1", h)
    return F.conv2d(h, sd["add_mean.weight"], sd["add_mean.bias"]) / rgb_range


def ref_rdn_yjn(sd: dict, x: torch.Tensor, D: int, C: int, factors: list[int]) -> torch.Tensor:
    f1 = conv(sd, "sfe1", x)
    h = conv(sd, "sfe2", f1)
    outs = []
    for i in range(D):
        t = h
        for c in range(C):
            t = torch.cat([t, F.relu(conv(sd, f"rdbs.{i}.layers.{c}.conv", t))], 1)
        h = h + conv(sd, f"rdbs.{i}.lff", t)
        outs.append(h)
    h = conv(sd, "gff.1", conv(sd, "gff.0", torch.cat(outs, 1))) + f1
    for j, f in enumerate(factors):
        h = F.pixel_shuffle(conv(sd, f"upscale.{2 * j}", h), f)
    return conv(sd, "output", h)


def ref_rdn_edsr(
    sd: dict, x: torch.Tensor, D: int, C: int, factors: list[int], rgb_range: float = 255.0
) -> torch.Tensor:
    f1 = conv(sd, "SFENet1", x * rgb_range)
    h = conv(sd, "SFENet2", f1)
    outs = []
    for i in range(D):
        t = h
        for c in range(C):
            t = torch.cat([t, F.relu(conv(sd, f"RDBs.{i}.convs.{c}.conv.0", t))], 1)
        h = conv(sd, f"RDBs.{i}.LFF", t) + h
        outs.append(h)
    h = conv(sd, "GFF.1", conv(sd, "GFF.0", torch.cat(outs, 1))) + f1
    for j, f in enumerate(factors):
        h = F.pixel_shuffle(conv(sd, f"UPNet.{2 * j}", h), f)
    return conv(sd, f"UPNet.{2 * len(factors)}", h) / rgb_range


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def roundtrip(sd: dict, tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    path = tmp_path / name
    torch.save(sd, path)
    return torch.load(path, weights_only=True)


def image(channels: int, h: int = 6, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(seed))


def run(descriptor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return descriptor.model.eval()(x)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= TOL, err
    assert expected.abs().max().item() > 1e-3  # a degenerate (all-zero) comparison proves nothing


OURS = [support.architecture for support in ARCH_SUPPORTS]


def our_detections(sd: dict) -> list[str]:
    return [arch.id for arch in OURS if arch.detect(sd)]


def spandrel_detections(sd: dict) -> list[str]:
    return [
        support.architecture.id for support in spandrel.MAIN_REGISTRY.architectures("detection") if support.detect(sd)
    ]


# ---------------------------------------------------------------------------------------------
# ESPCN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_espcn(tmp_path: Path, scale: int) -> None:
    sd = roundtrip(espcn_sd(scale), tmp_path, f"espcn_x{scale}.pth")
    assert our_detections(sd) == ["ESPCN"]
    d = ESPCNArch().load(sd)
    assert (d.scale, d.input_channels, d.output_channels, d.purpose) == (scale, 1, 1, "SR")
    assert d.supports_half and d.supports_bfloat16 and d.tiling == spandrel.ModelTiling.SUPPORTED
    assert d.model.receptive_radius == 4  # 5x5, 3x3, 3x3 at LR, then a pixel shuffle
    x = image(1)
    assert_close(run(d, x), ref_espcn(sd, x, scale))


def test_espcn_scale_comes_from_the_weights_not_the_hints(tmp_path: Path) -> None:
    sd = roundtrip(espcn_sd(3), tmp_path, "espcn_x2.pth")
    d = ESPCNArch().load(sd, LoadHints(scale=4, file_name="espcn_x2.pth"))
    assert d.scale == 3
    assert run(d, image(1)).shape == (1, 1, 18, 21)


# ---------------------------------------------------------------------------------------------
# SRCNN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
def test_srcnn(tmp_path: Path, scale: int) -> None:
    name = f"srcnn_x{scale}.pth"
    sd = roundtrip(srcnn_sd(), tmp_path, name)
    assert our_detections(sd) == ["SRCNN"]
    d = SRCNNArch().load(sd, LoadHints(file_name=name))
    assert (d.scale, d.input_channels, d.output_channels, d.tags) == (scale, 1, 1, ["9-5-5"])
    x = image(1)
    y = run(d, x)
    assert y.shape == (1, 1, 6 * scale, 7 * scale)
    assert_close(y, ref_srcnn(sd, x, scale))


def test_srcnn_915_variant(tmp_path: Path) -> None:
    sd = roundtrip(srcnn_sd(k2=1), tmp_path, "srcnn.pth")
    d = SRCNNArch().load(sd, LoadHints(scale=2))
    assert d.tags == ["9-1-5"]
    x = image(1)
    assert_close(run(d, x), ref_srcnn(sd, x, 2))


def test_srcnn_scale_hints(tmp_path: Path) -> None:
    sd = roundtrip(srcnn_sd(), tmp_path, "srcnn.pth")
    assert SRCNNArch().load(sd, LoadHints(file_name="SRCNN_4x.pth")).scale == 4
    assert SRCNNArch().load(sd, LoadHints(scale=3, file_name="srcnn_x2.pth")).scale == 3  # explicit wins
    for hints in (None, LoadHints(), LoadHints(file_name="srcnn.pth")):
        with pytest.raises(HintNeededError) as info:
            SRCNNArch().load(sd, hints)
        assert info.value.hint == "scale" and info.value.architecture == "SRCNN"
        assert "--model-scale" in str(info.value) and "x2" in str(info.value)
    with pytest.raises(ValueError):
        SRCNNArch().load(sd, LoadHints(scale=0))


# ---------------------------------------------------------------------------------------------
# FSRCNN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fsrcnn(tmp_path: Path, scale: int) -> None:
    sd = roundtrip(fsrcnn_sd(d=12, s=5, m=2), tmp_path, "fsrcnn.pth")
    assert our_detections(sd) == ["FSRCNN"]
    d = FSRCNNArch().load(sd, LoadHints(scale=scale))
    assert (d.scale, d.input_channels, d.output_channels) == (scale, 1, 1)
    assert d.tags == ["d12", "s5", "m2"]
    x = image(1)
    y = run(d, x)
    assert y.shape == (1, 1, 6 * scale, 7 * scale)
    assert_close(y, ref_fsrcnn(sd, x, scale, m=2))


def test_fsrcnn_public_default_size_and_hints(tmp_path: Path) -> None:
    sd = roundtrip(fsrcnn_sd(d=56, s=12, m=4), tmp_path, "fsrcnn_x3.pth")
    d = FSRCNNArch().load(sd, LoadHints(file_name="fsrcnn_x3.pth"))
    assert (d.scale, d.tags) == (3, ["d56", "s12", "m4"])
    with pytest.raises(HintNeededError, match="scale"):
        FSRCNNArch().load(sd, LoadHints(file_name="fsrcnn.pth"))


# ---------------------------------------------------------------------------------------------
# EDSR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale,factors", [(2, [2]), (3, [3]), (4, [2, 2])])
def test_edsr(tmp_path: Path, scale: int, factors: list[int]) -> None:
    sd = roundtrip(edsr_sd(n_resblocks=2, n_feats=8, scale=scale), tmp_path, "edsr.pth")
    assert our_detections(sd) == ["EDSR"]
    d = EDSRArch().load(sd)
    assert (d.scale, d.input_channels, d.output_channels) == (scale, 3, 3)
    assert d.tags == ["8nf", "2nb"]
    assert (d.model.res_scale, d.model.rgb_range) == (1.0, 255.0)
    x = image(3)
    assert_close(run(d, x), ref_edsr(sd, x, 2, factors, res_scale=1.0, rgb_range=255.0))


def test_edsr_wide_uses_res_scale_0_1(tmp_path: Path) -> None:
    sd = roundtrip(edsr_sd(n_resblocks=1, n_feats=256, scale=2), tmp_path, "edsr.pth")
    d = EDSRArch().load(sd)
    assert d.model.res_scale == 0.1 and d.tags == ["256nf", "1nb"]
    x = image(3, 4, 5)
    assert_close(run(d, x), ref_edsr(sd, x, 1, [2], res_scale=0.1, rgb_range=255.0))


def test_edsr_rgb_range_read_from_mean_shift(tmp_path: Path) -> None:
    sd = roundtrip(edsr_sd(n_resblocks=1, n_feats=8, scale=2, rgb_range=1.0), tmp_path, "edsr.pth")
    d = EDSRArch().load(sd)
    assert d.model.rgb_range == 1.0
    x = image(3)
    assert_close(run(d, x), ref_edsr(sd, x, 1, [2], res_scale=1.0, rgb_range=1.0))


def test_edsr_needs_its_mean_shift_layers(tmp_path: Path) -> None:
    sd = edsr_sd(n_resblocks=1, n_feats=8, scale=2)
    del sd["sub_mean.weight"], sd["sub_mean.bias"], sd["add_mean.weight"], sd["add_mean.bias"]
    assert our_detections(sd) == []


# ---------------------------------------------------------------------------------------------
# RDN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale,factors", [(2, [2]), (3, [3]), (4, [2, 2])])
def test_rdn_yjn870(tmp_path: Path, scale: int, factors: list[int]) -> None:
    sd = roundtrip(rdn_yjn_sd(G0=8, D=3, C=2, scale=scale), tmp_path, "rdn_x4.pth")
    assert our_detections(sd) == ["RDN"]
    d = RDNArch().load(sd)
    m = d.model
    assert (m.D, m.C, m.G, m.G0, m.layout, m.rgb_range) == (3, 2, 8, 8, "yjn870", 1.0)
    assert (d.scale, d.input_channels, d.output_channels) == (scale, 3, 3)
    x = image(3)
    assert_close(run(d, x), ref_rdn_yjn(sd, x, 3, 2, factors))


@pytest.mark.parametrize("scale,factors", [(2, [2]), (3, [3]), (4, [2, 2])])
def test_rdn_edsr_layout(tmp_path: Path, scale: int, factors: list[int]) -> None:
    sd = roundtrip(rdn_edsr_sd(G0=8, G=4, D=2, C=3, scale=scale), tmp_path, "rdn.pth")
    assert our_detections(sd) == ["RDN"]
    d = RDNArch().load(sd)
    m = d.model
    assert (m.D, m.C, m.G, m.G0, m.layout, m.rgb_range) == (2, 3, 4, 8, "edsr", 255.0)
    assert d.scale == scale
    x = image(3)
    assert_close(run(d, x), ref_rdn_edsr(sd, x, 2, 3, factors))


def test_rdn_edsr_layout_kernel_5(tmp_path: Path) -> None:
    sd = roundtrip(rdn_edsr_sd(G0=6, G=4, D=1, C=2, scale=2, k=5), tmp_path, "rdn.pth")
    d = RDNArch().load(sd)
    x = image(3)
    assert_close(run(d, x), ref_rdn_edsr(sd, x, 1, 2, [2]))


def test_rdn_yjn870_needs_equal_growth_and_features() -> None:
    sd = rdn_yjn_sd(G0=8, D=2, C=2, scale=2)
    sd["rdbs.0.layers.0.conv.weight"] = torch.zeros(4, 8, 3, 3)
    sd["rdbs.0.layers.0.conv.bias"] = torch.zeros(4)
    assert our_detections(sd) == []


# ---------------------------------------------------------------------------------------------
# Receptive radius
# ---------------------------------------------------------------------------------------------


def changed_columns(model: torch.nn.Module, channels: int, radius: int) -> dict[int, float]:
    """Largest output change in the footprint of the centre pixel when one pixel at offset dx changes."""
    size = 2 * radius + 7
    centre = size // 2
    x = image(channels, size, size, seed=5)
    scale = model.scale
    changes = {}
    with torch.no_grad():
        base = model(x)
        for dx in (-radius - 1, -radius, radius, radius + 1):
            x2 = x.clone()
            x2[..., centre, centre + dx] += 10.0
            diff = (model(x2) - base)[..., centre * scale : (centre + 1) * scale, centre * scale : (centre + 1) * scale]
            changes[dx] = diff.abs().max().item()
    return changes


RADIUS_CASES = {
    "espcn": lambda: ESPCNArch().load(espcn_sd(3)),
    "srcnn_x2": lambda: SRCNNArch().load(srcnn_sd(), LoadHints(scale=2)),
    "srcnn_x3": lambda: SRCNNArch().load(srcnn_sd(), LoadHints(scale=3)),  # whole-pixel bicubic positions
    "srcnn_x4": lambda: SRCNNArch().load(srcnn_sd(), LoadHints(scale=4)),
    "fsrcnn_x2": lambda: FSRCNNArch().load(fsrcnn_sd(m=1), LoadHints(scale=2)),
    "fsrcnn_x3": lambda: FSRCNNArch().load(fsrcnn_sd(m=1), LoadHints(scale=3)),
    "fsrcnn_x4": lambda: FSRCNNArch().load(fsrcnn_sd(m=1), LoadHints(scale=4)),
    "edsr_x2": lambda: EDSRArch().load(edsr_sd(1, 8, 2)),
    "edsr_x3": lambda: EDSRArch().load(edsr_sd(1, 8, 3)),
    "rdn_yjn_x4": lambda: RDNArch().load(rdn_yjn_sd(G0=8, D=2, C=2, scale=4)),
    "rdn_edsr_x2": lambda: RDNArch().load(rdn_edsr_sd(G0=8, G=4, D=1, C=2, scale=2)),
}


@pytest.mark.parametrize("case", sorted(RADIUS_CASES))
def test_receptive_radius_is_exact(case: str) -> None:
    d = RADIUS_CASES[case]()
    model = d.model.eval()
    radius = model.receptive_radius
    assert isinstance(radius, int) and radius > 0
    changes = changed_columns(model, d.input_channels, radius)
    assert changes[-radius - 1] < 1e-6 and changes[radius + 1] < 1e-6, changes
    assert max(changes[-radius], changes[radius]) > 1e-5, changes


def test_receptive_radius_steps() -> None:
    assert receptive_radius([("conv", 2), ("conv", 1)]) == 3
    assert receptive_radius([("conv", 1), ("shuffle", 2), ("conv", 1)]) == 2
    assert receptive_radius([("tconv", 1, 9, 4)]) == 4
    assert receptive_radius([("bicubic", 2)]) == 2
    assert receptive_radius([("bicubic", 3)]) == 2  # x3 source positions -1/3, 0, 1/3: taps -2..1, 0..0, -1..2


# ---------------------------------------------------------------------------------------------
# Cross-detection with spandrel
# ---------------------------------------------------------------------------------------------


def our_state_dicts() -> dict[str, dict]:
    return {
        "espcn": espcn_sd(2),
        "espcn_rgb": espcn_sd(2, channels=3),
        "srcnn": srcnn_sd(),
        "srcnn_rgb": srcnn_sd(channels=3),
        "fsrcnn": fsrcnn_sd(),
        "fsrcnn_m0": fsrcnn_sd(m=0),
        "edsr_x2": edsr_sd(1, 8, 2),
        "edsr_x3": edsr_sd(1, 8, 3),
        "edsr_x4": edsr_sd(1, 8, 4),
        "rdn_yjn": rdn_yjn_sd(8, 2, 2, 2),
        "rdn_edsr": rdn_edsr_sd(8, 4, 2, 2, 4),
    }


EXPECTED_ARCH = {"espcn": "ESPCN", "srcnn": "SRCNN", "fsrcnn": "FSRCNN", "edsr": "EDSR", "rdn": "RDN"}


def spandrel_state_dicts() -> dict[str, dict]:
    torch.manual_seed(0)
    models = {
        "ESRGAN": ESRGAN(num_filters=8, num_blocks=1, scale=4),
        "Compact": Compact(num_feat=8, num_conv=2, upscale=2),
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
        "RCAN": RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4),
        "RCAN_nonorm": RCAN(scale=4, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, norm=False),
        "DnCNN": DnCNN(nc=8, nb=8, act_mode="R"),
    }
    return {name: model.state_dict() for name, model in models.items()}


def test_every_file_is_detected_by_exactly_one_of_ours_and_by_no_spandrel_arch() -> None:
    for name, sd in our_state_dicts().items():
        assert our_detections(sd) == [EXPECTED_ARCH[name.split("_")[0]]], name
        assert spandrel_detections(sd) == [], name


def test_full_size_public_configurations_on_the_meta_device() -> None:
    """The released sizes (keys and shapes only; meta tensors cost nothing) reach only our detector."""
    from tilewise.archs.classic import EDSR, ESPCN, FSRCNN, RDN, SRCNN

    with torch.device("meta"):
        models = {
            "ESPCN": ESPCN(scale=3),
            "SRCNN": SRCNN(scale=2),
            "FSRCNN": FSRCNN(scale=4),
            "EDSR": EDSR(n_resblocks=32, n_feats=256, scale=4),
            "EDSR_baseline": EDSR(n_resblocks=16, n_feats=64, scale=3),
            "RDN": RDN(G0=64, G=64, C=8, D=16, scale=4, layout="yjn870"),
            "RDN_edsr_A": RDN(G0=64, G=32, C=6, D=20, scale=2, layout="edsr"),
        }
        sds = {name: model.state_dict() for name, model in models.items()}
    for name, sd in sds.items():
        assert our_detections(sd) == [name.split("_")[0]], name
        assert spandrel_detections(sd) == [], name


def test_ours_do_not_detect_spandrel_models() -> None:
    for name, sd in spandrel_state_dicts().items():
        assert our_detections(sd) == [], name
        assert spandrel_detections(sd)[:1] == [name.split("_")[0]], name  # the sample is a real spandrel file


def test_one_extra_or_missing_key_defeats_detection() -> None:
    for name, sd in our_state_dicts().items():
        extra = dict(sd)
        extra["body.0.body.0.body.3.conv_du.0.weight"] = torch.zeros(2, 8, 1, 1)  # an RCAN-only key
        assert our_detections(extra) == [], name
        missing = dict(sd)
        del missing[sorted(missing)[len(missing) // 2]]
        assert our_detections(missing) == [], name


def test_detectors_survive_odd_state_dicts() -> None:
    odd = [
        {},
        {"conv1.weight": torch.zeros(64, 1, 9, 9)},
        {"conv1.weight": 3, "conv2.weight": "x", "conv3.weight": None},
        {"head.0.weight": torch.zeros(8, 3, 3, 3), "tail.0.0.weight": torch.zeros(0)},
        {k: v for k, v in edsr_sd(1, 8, 2).items() if not k.startswith("tail.1")},
    ]
    for sd in odd:
        assert our_detections(sd) == []


def test_registry_order_and_loading() -> None:
    registry = spandrel.MAIN_REGISTRY.copy()
    registry.add(*ARCH_SUPPORTS)
    order = [support.architecture.id for support in registry.architectures("detection")]
    assert order.index("EDSR") < order.index("RCAN")
    assert registry.load(edsr_sd(1, 8, 2)).architecture.id == "EDSR"
    assert registry.load(rdn_yjn_sd(8, 2, 2, 3)).architecture.id == "RDN"
    assert registry.load(espcn_sd(2)).architecture.id == "ESPCN"
    with pytest.raises(HintNeededError):  # spandrel's hint-less load reaches our loader and asks for the scale
        registry.load(fsrcnn_sd())
    for name, sd in spandrel_state_dicts().items():
        assert registry.load(sd).architecture.id == name.split("_")[0], name


# --- through the engine: files in public layouts load by detection and upscale RGB photos ------

ENGINE_CASES = {
    "espcn_x3.pth": (lambda: espcn_sd(3), "ESPCN", 3),
    "srcnn_x2.pth": (lambda: srcnn_sd(), "SRCNN", 2),
    "fsrcnn_x4.pth": (lambda: fsrcnn_sd(), "FSRCNN", 4),
    "edsr_baseline_x2.pth": (lambda: edsr_sd(2, 16, 2), "EDSR", 2),
    "rdn_x2.pth": (lambda: rdn_yjn_sd(16, 2, 2, 2), "RDN", 2),
}


@pytest.mark.parametrize("name", sorted(ENGINE_CASES))
def test_engine_loads_and_upscales_rgb(tmp_path: Path, name: str) -> None:
    from tilewise.engine import TileSettings, UpscaleOptions, load_model, upscale
    from tilewise.engine.image.colour import rgb_to_ycbcr, ycbcr_to_rgb

    make, arch_id, scale = ENGINE_CASES[name]
    path = tmp_path / name
    torch.save(make(), path)
    descriptor = load_model(path, cache=None)
    assert descriptor.architecture.id == arch_id and descriptor.scale == scale
    rgb = image(3, 20, 23, seed=5)
    whole = upscale(descriptor, rgb, UpscaleOptions(device="cpu", tiles=TileSettings(tile=-1)))
    assert whole.shape == (1, 3, 20 * scale, 23 * scale)
    if descriptor.input_channels == 1:  # Y models: Y through the model, chroma bicubic, back to RGB
        ycc = rgb_to_ycbcr(rgb)
        y = run(descriptor, ycc[:, :1]).clamp(0, 1)
        chroma = torch.nn.functional.interpolate(ycc[:, 1:], scale_factor=scale, mode="bicubic", align_corners=False)
        assert (whole - ycbcr_to_rgb(torch.cat([y, chroma], 1)).clamp(0, 1)).abs().max().item() < 1e-5
    tiled = upscale(descriptor, rgb, UpscaleOptions(device="cpu", tiles=TileSettings(tile=12, batch=2)))
    assert (tiled - whole).abs().max().item() <= 1e-5
