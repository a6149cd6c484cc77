"""Classic super-resolution CNNs that spandrel does not ship: ESPCN, SRCNN, FSRCNN, EDSR and RDN.

Each module reproduces the state-dict keys of the best-known public PyTorch implementation,
so a `.pth` written by that code loads here unchanged:

========  ==========================================  ==========================================
arch      key layout of                               input / output
========  ==========================================  ==========================================
ESPCN     yjn870/ESPCN-pytorch ``models.py``          LR luma (B,1,H,W) in [0,1]
SRCNN     yjn870/SRCNN-pytorch ``models.py``          LR luma; bicubic pre-upsampling done here
FSRCNN    yjn870/FSRCNN-pytorch ``models.py``         LR luma (B,1,H,W) in [0,1]
EDSR      sanghyun-son/EDSR-PyTorch ``edsr.py``       RGB in [0,1]; scaled to rgb_range inside
RDN       yjn870/RDN-pytorch ``models.py`` (main)     RGB in [0,1]
RDN       EDSR-PyTorch ``rdn.py`` (also accepted)     RGB in [0,1]; scaled to 0..255 inside
========  ==========================================  ==========================================

Detection compares the *whole* state dict with the keys and shapes of a model built (on the
meta device, so no memory is spent) from hyper-parameters read off a few keys. Generic names
such as ``conv1.weight`` or ``head.0.weight`` therefore only match when every key and every
shape agree, and RCAN files (same ``head``/``body``/``tail``/``sub_mean`` names as EDSR, but
nested residual groups with channel attention) never match EDSR.

What the weights do not store:

* SRCNN and FSRCNN: the scale. It comes from `LoadHints` (explicit, else ``x3``/``_3x`` in the file
  name); without one the loader raises `HintNeededError`.
* EDSR ``res_scale``: 0.1 for the paper's wide model (``n_feats`` >= 256, the public training
  recipe ``--n_resblocks 32 --n_feats 256 --res_scale 0.1``), 1 otherwise (the repository default,
  used by the baseline ``r16f64`` models). No other value is accepted.
* EDSR ``rgb_range``: read back from the ``add_mean`` bias (``rgb_range * DIV2K mean``); 255 (the
  repository default) when that bias does not have the DIV2K-mean form.
* RDN in the EDSR-PyTorch layout: ``rgb_range`` 255 (that repository's default; its ``rdn.py`` has
  no mean-shift layers to read it from). yjn870's RDN works on [0,1].

The engine converts RGB to luma and back around the 1-channel models; these modules only see
(B,1,H,W) tensors. Every module has an int ``receptive_radius``: the largest distance, in input
pixels, between an output pixel's own input pixel (``floor(out / scale)``) and any input pixel that
can change it. A tiler that gives each tile that many pixels of context reproduces the whole-image
result exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from spandrel import ArchId, ArchSupport, ImageModelDescriptor, ModelTiling, StateDict
from torch import nn

from .base import HintNeededError, LoadHints, NativeArchitecture

# ---------------------------------------------------------------------------------------------
# Receptive radius
# ---------------------------------------------------------------------------------------------

# A model's spatial path, input to output, as a list of steps:
#   ("conv", r)               a convolution reaching r pixels each side at the current resolution
#   ("shuffle", f)            PixelShuffle(f): resolution times f
#   ("bicubic", s)            torch bicubic upsampling by s, align_corners=False
#   ("tconv", stride, k, p)   ConvTranspose2d(kernel k, stride, padding p)
Step = tuple


def receptive_radius(steps: Sequence[Step]) -> int:
    """Input pixels each side of an output pixel's own input pixel that can change it.

    Walks the steps backwards from every output phase (output positions 0..scale-1, whose own
    input pixel is 0) and takes the widest reach. Bicubic (a = -0.75) at source position x weighs
    floor(x)-1 .. floor(x)+2, except that a whole-number x (odd scales) weighs x alone: the
    other three taps are exactly zero. torch computes x in floating point, so far from the
    origin it can miss a whole number by an ulp and give the next pixel a weight near 1e-8,
    far below any output precision; the radius ignores that.
    """
    total = 1
    for step in steps:
        if step[0] in ("shuffle", "bicubic", "tconv"):
            total *= int(step[1])
    worst = 0
    for phase in range(total):
        lo, hi = phase, phase
        for step in reversed(steps):
            kind = step[0]
            if kind == "conv":
                lo, hi = lo - step[1], hi + step[1]
            elif kind == "shuffle":
                lo, hi = lo // step[1], hi // step[1]
            elif kind == "bicubic":
                s = step[1]
                lo, hi = _bicubic_taps(lo, s)[0], _bicubic_taps(hi, s)[1]
            elif kind == "tconv":
                _, stride, k, pad = step
                lo = -((-(lo + pad - k + 1)) // stride)  # ceil division
                hi = (hi + pad) // stride
            else:  # pragma: no cover - programming error
                raise ValueError(f"unknown step {kind!r}")
        worst = max(worst, -lo, hi)
    return worst


def _bicubic_taps(p: int, s: int) -> tuple[int, int]:
    """First and last input pixel with a non-zero weight in output pixel p of a bicubic x s."""
    x = Fraction(2 * p + 1 - s, 2 * s)  # (p + 0.5) / s - 0.5
    if x.denominator == 1:
        return int(x), int(x)
    return math.floor(x) - 1, math.floor(x) + 2


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _reach(conv: nn.Module) -> Step:
    assert isinstance(conv, nn.Conv2d), conv
    return ("conv", conv.kernel_size[0] // 2)


def _upsample_stages(scale: int) -> list[int]:
    """PixelShuffle factors of the EDSR/RDN upsamplers: 2 per doubling, or one 3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    raise ValueError(f"this upsampler supports x3 and powers of two, not x{scale}")


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class ESPCN(nn.Module):
    """Shi et al. 2016, yjn870 layout: ``first_part`` (conv, tanh, conv, tanh), ``last_part`` (conv, shuffle)."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        scale: int = 3,
        features: tuple[int, int] = (64, 32),
        kernel_sizes: tuple[int, int, int] = (5, 3, 3),
    ):
        super().__init__()
        self.scale = int(scale)
        self.in_channels = in_channels
        f1, f2 = features
        k1, k2, k3 = kernel_sizes
        self.first_part = nn.Sequential(_conv(in_channels, f1, k1), nn.Tanh(), _conv(f1, f2, k2), nn.Tanh())
        self.last_part = nn.Sequential(_conv(f2, in_channels * self.scale**2, k3), nn.PixelShuffle(self.scale))
        self.receptive_radius: int = receptive_radius(
            [_reach(self.first_part[0]), _reach(self.first_part[2]), _reach(self.last_part[0]), ("shuffle", self.scale)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.first_part(x))


class SRCNN(nn.Module):
    """Dong et al. 2014, yjn870 layout (``conv1``/``conv2``/``conv3``, 'same' padding).

    The public network runs on an image already enlarged with bicubic; this module does that
    enlargement itself (torch bicubic, a = -0.75, align_corners=False) so it takes the LR image.
    yjn870's scripts enlarge with PIL bicubic (a = -0.5, window renormalised at the borders) in
    8-bit RGB before converting to luma, so results differ slightly from theirs, mostly near edges.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        scale: int = 2,
        features: tuple[int, int] = (64, 32),
        kernel_sizes: tuple[int, int, int] = (9, 5, 5),
    ):
        super().__init__()
        self.scale = int(scale)
        self.in_channels = in_channels
        n1, n2 = features
        k1, k2, k3 = kernel_sizes
        self.conv1 = _conv(in_channels, n1, k1)
        self.conv2 = _conv(n1, n2, k2)
        self.conv3 = _conv(n2, in_channels, k3)
        self.relu = nn.ReLU(inplace=True)
        steps: list[Step] = [("bicubic", self.scale)] if self.scale > 1 else []
        steps += [_reach(self.conv1), _reach(self.conv2), _reach(self.conv3)]
        self.receptive_radius: int = receptive_radius(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.conv3(x)


class FSRCNN(nn.Module):
    """Dong et al. 2016, yjn870 layout: ``first_part``, ``mid_part`` (PReLU after every conv), ``last_part``.

    ``last_part`` is ``ConvTranspose2d(d, c, k, stride=scale, padding=k//2, output_padding=scale-1)``,
    so the output is exactly ``scale`` times the input; the stride is not in the weights.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        scale: int = 2,
        d: int = 56,
        s: int = 12,
        m: int = 4,
        kernel_sizes: tuple[int, int, int] = (5, 3, 9),
    ):
        super().__init__()
        self.scale = int(scale)
        self.in_channels = in_channels
        k_first, k_mid, k_last = kernel_sizes
        self.first_part = nn.Sequential(_conv(in_channels, d, k_first), nn.PReLU(d))
        mid: list[nn.Module] = [_conv(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [_conv(s, s, k_mid), nn.PReLU(s)]
        mid += [_conv(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(
            d, in_channels, k_last, stride=self.scale, padding=k_last // 2, output_padding=self.scale - 1
        )
        steps: list[Step] = [_reach(self.first_part[0])]
        steps += [_reach(layer) for layer in self.mid_part if isinstance(layer, nn.Conv2d)]
        steps.append(("tconv", self.scale, k_last, k_last // 2))
        self.receptive_radius: int = receptive_radius(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))


DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """EDSR-PyTorch's fixed 1x1 colour shift: ``x / std + sign * rgb_range * mean / std``.

    Its weight and bias are frozen parameters, so they are in every saved state dict.
    """

    def __init__(
        self, rgb_range: float, sign: int, mean: Sequence[float] = DIV2K_MEAN, std: Sequence[float] = (1.0, 1.0, 1.0)
    ):
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std, dtype=torch.float32)
        assert self.bias is not None
        with torch.no_grad():
            self.weight.copy_(torch.diag(1.0 / std_t).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(mean, dtype=torch.float32) / std_t)
        for p in self.parameters():
            p.requires_grad_(False)


class ResBlock(nn.Module):
    """``body`` = conv, ReLU, conv; output ``x + res_scale * body(x)``."""

    def __init__(self, n_feats: int, kernel_size: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            _conv(n_feats, n_feats, kernel_size), nn.ReLU(inplace=True), _conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1:
            res = res * self.res_scale
        return x + res


class EDSR(nn.Module):
    """Lim et al. 2017, sanghyun-son/EDSR-PyTorch layout.

    ``sub_mean``, ``head.0``, ``body.{0..n-1}`` (ResBlocks) + ``body.n`` (conv), ``tail.0`` (upsampler:
    conv + PixelShuffle(2) per doubling, or one conv + PixelShuffle(3)), ``tail.1``, ``add_mean``.
    Takes and returns [0,1]; works internally in [0, rgb_range] like the original.
    """

    def __init__(
        self,
        *,
        n_colors: int = 3,
        n_resblocks: int = 16,
        n_feats: int = 64,
        scale: int = 2,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.scale = int(scale)
        self.rgb_range = float(rgb_range)
        self.res_scale = float(res_scale)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(_conv(n_colors, n_feats, kernel_size))
        body: list[nn.Module] = [ResBlock(n_feats, kernel_size, res_scale) for _ in range(n_resblocks)]
        body.append(_conv(n_feats, n_feats, kernel_size))
        self.body = nn.Sequential(*body)
        up: list[nn.Module] = []
        for f in _upsample_stages(self.scale):
            up += [_conv(n_feats, f * f * n_feats, 3), nn.PixelShuffle(f)]
        upsampler = nn.Sequential(*up)
        self.tail = nn.Sequential(upsampler, _conv(n_feats, n_colors, kernel_size))

        steps: list[Step] = [_reach(self.head[0])]
        for block in self.body:
            if isinstance(block, ResBlock):
                steps += [_reach(block.body[0]), _reach(block.body[2])]
            else:
                steps.append(_reach(block))
        for layer in upsampler:
            steps.append(_reach(layer) if isinstance(layer, nn.Conv2d) else ("shuffle", layer.upscale_factor))
        steps.append(_reach(self.tail[1]))
        self.receptive_radius: int = receptive_radius(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x * self.rgb_range)
        x = self.head(x)
        x = x + self.body(x)
        x = self.add_mean(self.tail(x))
        return x / self.rgb_range


# RDN: module names of the two supported layouts.
RDN_LAYOUTS: dict[str, dict[str, str]] = {
    # yjn870/RDN-pytorch: sfe1, sfe2, rdbs.i.layers.c.conv, rdbs.i.lff, gff.{0,1}, upscale.{0,2}, output
    "yjn870": {
        "sfe1": "sfe1",
        "sfe2": "sfe2",
        "rdbs": "rdbs",
        "gff": "gff",
        "up": "upscale",
        "layers": "layers",
        "lff": "lff",
    },
    # EDSR-PyTorch rdn.py: SFENet1, SFENet2, RDBs.i.convs.c.conv.0, RDBs.i.LFF, GFF.{0,1}, UPNet.{0,2[,4]}
    "edsr": {
        "sfe1": "SFENet1",
        "sfe2": "SFENet2",
        "rdbs": "RDBs",
        "gff": "GFF",
        "up": "UPNet",
        "layers": "convs",
        "lff": "LFF",
    },
}


class _DenseLayer(nn.Module):
    """conv + ReLU whose output is concatenated to its input. ``conv`` is a bare Conv2d (yjn870)
    or ``Sequential(Conv2d, ReLU)`` (EDSR-PyTorch), which is all the two layouts differ in here."""

    def __init__(self, cin: int, growth: int, kernel_size: int, wrapped: bool):
        super().__init__()
        conv = _conv(cin, growth, kernel_size)
        self.wrapped = wrapped
        self.conv = nn.Sequential(conv, nn.ReLU()) if wrapped else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if not self.wrapped:
            y = F.relu(y)
        return torch.cat((x, y), 1)

    @property
    def conv2d(self) -> nn.Conv2d:
        return self.conv[0] if self.wrapped else self.conv  # type: ignore[index,return-value]


class _RDB(nn.Module):
    def __init__(self, cin: int, growth: int, n_layers: int, kernel_size: int, layout: str):
        super().__init__()
        names = RDN_LAYOUTS[layout]
        self._layers_name, self._lff_name = names["layers"], names["lff"]
        layers = nn.Sequential(
            *[_DenseLayer(cin + i * growth, growth, kernel_size, layout == "edsr") for i in range(n_layers)]
        )
        self.add_module(self._layers_name, layers)
        self.add_module(self._lff_name, nn.Conv2d(cin + n_layers * growth, cin, 1))

    @property
    def dense_layers(self) -> nn.Sequential:
        return getattr(self, self._layers_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self._lff_name)(self.dense_layers(x)) + x


class RDN(nn.Module):
    """Zhang et al. 2018, Residual Dense Network, in either public PyTorch layout (see `RDN_LAYOUTS`).

    D residual dense blocks of C conv layers with growth rate G over G0 base features. In the
    yjn870 layout every block has G0 input channels and G must equal G0 (its residual adds a G-channel
    fusion to the block input); the upsampler works on G0 features there and on G features in
    EDSR-PyTorch's. Takes and returns [0,1]; ``rgb_range`` scales the input as the training did.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        G0: int = 64,
        G: int = 64,
        C: int = 8,
        D: int = 16,
        scale: int = 4,
        kernel_size: int = 3,
        rdb_kernel_size: int = 3,
        layout: str = "yjn870",
        rgb_range: float = 1.0,
    ):
        super().__init__()
        if layout not in RDN_LAYOUTS:
            raise ValueError(f"unknown RDN layout {layout!r}")
        if layout == "yjn870" and G != G0:
            raise ValueError("the yjn870 RDN layout needs G == G0")
        self.layout = layout
        self.scale = int(scale)
        self.rgb_range = float(rgb_range)
        self.D, self.C, self.G, self.G0 = D, C, G, G0
        self._names = RDN_LAYOUTS[layout]
        k = kernel_size
        self.add_module(self._names["sfe1"], _conv(in_channels, G0, k))
        self.add_module(self._names["sfe2"], _conv(G0, G0, k))
        self.add_module(self._names["rdbs"], nn.ModuleList([_RDB(G0, G, C, rdb_kernel_size, layout) for _ in range(D)]))
        self.add_module(self._names["gff"], nn.Sequential(nn.Conv2d(D * G0, G0, 1), _conv(G0, G0, k)))
        up_feats = G0 if layout == "yjn870" else G
        up: list[nn.Module] = []
        cin = G0
        for f in _upsample_stages(self.scale):
            up += [_conv(cin, up_feats * f * f, k), nn.PixelShuffle(f)]
            cin = up_feats
        last = _conv(up_feats, in_channels, k)
        if layout == "yjn870":
            self.upscale = nn.Sequential(*up)
            self.output = last
        else:
            self.UPNet = nn.Sequential(*up, last)

        steps: list[Step] = [_reach(self._part("sfe1")), _reach(self._part("sfe2"))]
        for rdb in self._part("rdbs"):
            steps += [_reach(layer.conv2d) for layer in rdb.dense_layers]
        steps.append(_reach(self._part("gff")[1]))
        for layer in self._tail():
            steps.append(_reach(layer) if isinstance(layer, nn.Conv2d) else ("shuffle", layer.upscale_factor))
        self.receptive_radius: int = receptive_radius(steps)

    def _part(self, role: str) -> Any:
        return getattr(self, self._names[role])

    def _tail(self) -> list[nn.Module]:
        if self.layout == "yjn870":
            return [*self.upscale, self.output]
        return list(self.UPNet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rgb_range != 1:
            x = x * self.rgb_range
        f1 = self._part("sfe1")(x)
        h = self._part("sfe2")(f1)
        outs = []
        for rdb in self._part("rdbs"):
            h = rdb(h)
            outs.append(h)
        h = self._part("gff")(torch.cat(outs, 1)) + f1
        for layer in self._tail():
            h = layer(h)
        if self.rgb_range != 1:
            h = h / self.rgb_range
        return h


# ---------------------------------------------------------------------------------------------
# Detection helpers
# ---------------------------------------------------------------------------------------------


def _shape(state_dict: Mapping[str, object], key: str) -> tuple[int, ...] | None:
    value = state_dict.get(key)
    shape = getattr(value, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def _kernel(shape: tuple[int, ...] | None) -> int | None:
    """The kernel size of a conv weight shape if it is 4-D, square and odd, else None."""
    if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[2] % 2 == 0:
        return None
    return shape[2]


def _count(state_dict: Mapping[str, object], pattern: str, step: int = 1) -> int:
    """How many of ``pattern.format(0), pattern.format(step), ...`` are keys, counting from 0 while present."""
    n = 0
    while pattern.format(n * step) in state_dict:
        n += 1
    return n


def _shapes_match(state_dict: Mapping[str, object], build: Callable[[], nn.Module]) -> bool:
    """True if the state dict has exactly the keys and shapes of the module `build()` makes."""
    with torch.device("meta"):
        expected = build().state_dict()
    if set(expected) != set(state_dict):
        return False
    return all(_shape(state_dict, key) == tuple(value.shape) for key, value in expected.items())


def _guarded(
    infer: Callable[[StateDict], dict | None], build: Callable[[dict], nn.Module]
) -> Callable[[StateDict], bool]:
    """A detect function: hyper-parameters from `infer`, then an exact key-and-shape comparison."""

    def detect(state_dict: StateDict) -> bool:
        try:
            params = infer(state_dict)
            return params is not None and _shapes_match(state_dict, lambda: build(params))
        except Exception:  # a detector must answer, never raise, whatever the file holds
            return False

    return detect


def _square_root(n: int) -> int | None:
    root = math.isqrt(n) if n > 0 else 0
    return root if root > 0 and root * root == n else None


def _describe(
    model: nn.Module, state_dict: StateDict, arch: NativeArchitecture, tags: list[str], channels: int
) -> ImageModelDescriptor:
    return ImageModelDescriptor(
        model,
        state_dict,
        architecture=arch,
        purpose="SR",
        tags=tags,
        supports_half=True,
        supports_bfloat16=True,
        scale=model.scale,  # type: ignore[arg-type]
        input_channels=channels,
        output_channels=channels,
        tiling=ModelTiling.SUPPORTED,
    )


def _hinted_scale(arch: str, hints: LoadHints | None) -> int:
    scale = (hints or LoadHints()).scale_or_none()
    if scale is None:
        raise HintNeededError(
            arch,
            "scale",
            "rename the file to include x2/x3/x4 (for example model_x3.pth) or pass a scale hint (CLI --model-scale N)",
        )
    if scale < 1:
        raise ValueError(f"{arch} needs a positive integer scale, got {scale}")
    return scale


def _not_detected(arch: str) -> ValueError:
    return ValueError(f"this state dict does not have the {arch} key layout")


# ---------------------------------------------------------------------------------------------
# ESPCN
# ---------------------------------------------------------------------------------------------


def _espcn_params(sd: StateDict) -> dict | None:
    w0, w2, w3 = (_shape(sd, f"{p}.weight") for p in ("first_part.0", "first_part.2", "last_part.0"))
    k1, k2, k3 = _kernel(w0), _kernel(w2), _kernel(w3)
    if not (k1 and k2 and k3) or w0 is None or w2 is None or w3 is None:
        return None
    channels = w0[1]
    if w3[0] % channels:
        return None
    scale = _square_root(w3[0] // channels)
    if scale is None:
        return None
    return {"in_channels": channels, "scale": scale, "features": (w0[0], w2[0]), "kernel_sizes": (k1, k2, k3)}


class ESPCNArch(NativeArchitecture[ESPCN]):
    def __init__(self) -> None:
        super().__init__(id="ESPCN", name="ESPCN", detect=_guarded(_espcn_params, lambda p: ESPCN(**p)))

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[ESPCN]:
        params = _espcn_params(state_dict)
        if params is None:
            raise _not_detected("ESPCN")
        model = ESPCN(**params)
        f1, f2 = params["features"]
        return _describe(model, state_dict, self, [f"{f1}-{f2}"], params["in_channels"])


# ---------------------------------------------------------------------------------------------
# SRCNN
# ---------------------------------------------------------------------------------------------


def _srcnn_params(sd: StateDict) -> dict | None:
    w1, w2, w3 = (_shape(sd, f"conv{i}.weight") for i in (1, 2, 3))
    k1, k2, k3 = _kernel(w1), _kernel(w2), _kernel(w3)
    # The paper's 9-1-5 / 9-3-5 / 9-5-5 networks (yjn870 uses 9-5-5), on luma or RGB.
    if w1 is None or w2 is None or k1 != 9 or k2 not in (1, 3, 5) or k3 != 5 or w1[1] not in (1, 3):
        return None
    return {"in_channels": w1[1], "features": (w1[0], w2[0]), "kernel_sizes": (k1, k2, k3)}


class SRCNNArch(NativeArchitecture[SRCNN]):
    def __init__(self) -> None:
        super().__init__(id="SRCNN", name="SRCNN", detect=_guarded(_srcnn_params, lambda p: SRCNN(scale=2, **p)))

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[SRCNN]:
        params = _srcnn_params(state_dict)
        if params is None:
            raise _not_detected("SRCNN")
        scale = _hinted_scale("SRCNN", hints)
        model = SRCNN(scale=scale, **params)
        tag = "-".join(str(k) for k in params["kernel_sizes"])
        return _describe(model, state_dict, self, [tag], params["in_channels"])


# ---------------------------------------------------------------------------------------------
# FSRCNN
# ---------------------------------------------------------------------------------------------


def _fsrcnn_params(sd: StateDict) -> dict | None:
    w_first, w_shrink, w_last = (
        _shape(sd, k) for k in ("first_part.0.weight", "mid_part.0.weight", "last_part.weight")
    )
    if w_first is None or w_shrink is None or w_last is None:
        return None
    n_convs = _count(sd, "mid_part.{}.bias", step=2)
    m = n_convs - 2
    if m < 0:
        return None
    k_mid = _kernel(_shape(sd, "mid_part.2.weight")) if m > 0 else 3
    k_first, k_last = _kernel(w_first), _kernel(w_last)
    if not (k_first and k_mid and k_last):
        return None
    return {
        "in_channels": w_first[1],
        "d": w_first[0],
        "s": w_shrink[0],
        "m": m,
        "kernel_sizes": (k_first, k_mid, k_last),
    }


class FSRCNNArch(NativeArchitecture[FSRCNN]):
    def __init__(self) -> None:
        super().__init__(id="FSRCNN", name="FSRCNN", detect=_guarded(_fsrcnn_params, lambda p: FSRCNN(scale=2, **p)))

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[FSRCNN]:
        params = _fsrcnn_params(state_dict)
        if params is None:
            raise _not_detected("FSRCNN")
        scale = _hinted_scale("FSRCNN", hints)
        model = FSRCNN(scale=scale, **params)
        tags = [f"d{params['d']}", f"s{params['s']}", f"m{params['m']}"]
        return _describe(model, state_dict, self, tags, params["in_channels"])


# ---------------------------------------------------------------------------------------------
# EDSR
# ---------------------------------------------------------------------------------------------


def _edsr_params(sd: StateDict) -> dict | None:
    head = _shape(sd, "head.0.weight")
    k = _kernel(head)
    n_resblocks = _count(sd, "body.{}.body.0.weight")
    n_stages = _count(sd, "tail.0.{}.weight", step=2)
    first_up = _shape(sd, "tail.0.0.weight")
    if head is None or not k or head[1] != 3 or n_resblocks == 0 or n_stages == 0 or first_up is None:
        return None
    n_feats = head[0]
    if first_up[0] % n_feats:
        return None
    factor = _square_root(first_up[0] // n_feats)
    if factor == 3 and n_stages == 1:
        scale = 3
    elif factor == 2:
        scale = 2**n_stages
    else:
        return None
    res_scale = 0.1 if n_feats >= 256 else 1.0
    return {"n_resblocks": n_resblocks, "n_feats": n_feats, "scale": scale, "res_scale": res_scale, "kernel_size": k}


def edsr_rgb_range(state_dict: StateDict) -> float:
    """``rgb_range`` recovered from ``add_mean`` (bias = rgb_range * DIV2K mean / std, weight = 1/std);
    255 when the bias is not of that form (a custom mean)."""
    weight = state_dict["add_mean.weight"].detach().float().reshape(3, 3)
    bias = state_dict["add_mean.bias"].detach().float().reshape(3)
    diag = torch.diagonal(weight)
    if not torch.equal(weight, torch.diag(diag)) or bool((diag <= 0).any()):
        return 255.0
    ranges = bias / (diag * torch.tensor(DIV2K_MEAN))
    estimate = float(ranges.mean())
    if estimate <= 0 or float((ranges - estimate).abs().max()) > 1e-3 * estimate:
        return 255.0
    rounded = round(estimate)
    return float(rounded) if abs(estimate - rounded) <= 1e-3 * max(1.0, estimate) else estimate


class EDSRArch(NativeArchitecture[EDSR]):
    def __init__(self) -> None:
        super().__init__(id="EDSR", name="EDSR", detect=_guarded(_edsr_params, lambda p: EDSR(**p)))

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[EDSR]:
        params = _edsr_params(state_dict)
        if params is None:
            raise _not_detected("EDSR")
        model = EDSR(rgb_range=edsr_rgb_range(state_dict), **params)
        tags = [f"{params['n_feats']}nf", f"{params['n_resblocks']}nb"]
        if (params["n_resblocks"], params["n_feats"]) == (16, 64):
            tags.append("baseline")
        return _describe(model, state_dict, self, tags, 3)


# ---------------------------------------------------------------------------------------------
# RDN
# ---------------------------------------------------------------------------------------------


def _rdn_params(sd: StateDict) -> dict | None:
    for layout, names in RDN_LAYOUTS.items():  # noqa: B007 - the layout found is used after the loop
        if f"{names['sfe1']}.weight" in sd:
            break
    else:
        return None
    rdbs, layers, lff, up = names["rdbs"], names["layers"], names["lff"], names["up"]
    conv = "conv" if layout == "yjn870" else "conv.0"
    sfe1 = _shape(sd, f"{names['sfe1']}.weight")
    dense0 = _shape(sd, f"{rdbs}.0.{layers}.0.{conv}.weight")
    first_up = _shape(sd, f"{up}.0.weight")
    k, rk = _kernel(sfe1), _kernel(dense0)
    D = _count(sd, f"{rdbs}.{{}}.{lff}.weight")
    C = _count(sd, f"{rdbs}.0.{layers}.{{}}.{conv}.weight")
    n_up_convs = _count(sd, f"{up}.{{}}.weight", step=2)
    if sfe1 is None or dense0 is None or first_up is None or not (k and rk) or D == 0 or C == 0:
        return None
    G0, G = sfe1[0], dense0[0]
    if layout == "yjn870":
        if G != G0:
            return None
        n_stages, up_feats = n_up_convs, G0
    else:
        n_stages, up_feats = n_up_convs - 1, G  # UPNet ends with the output conv
    if n_stages not in (1, 2) or first_up[0] % up_feats:
        return None
    factor = _square_root(first_up[0] // up_feats)
    if n_stages == 2 and factor == 2:
        scale = 4
    elif n_stages == 1 and factor in (2, 3):
        scale = factor
    else:
        return None
    return {
        "in_channels": sfe1[1],
        "G0": G0,
        "G": G,
        "C": C,
        "D": D,
        "scale": scale,
        "kernel_size": k,
        "rdb_kernel_size": rk,
        "layout": layout,
        "rgb_range": 1.0 if layout == "yjn870" else 255.0,
    }


class RDNArch(NativeArchitecture[RDN]):
    def __init__(self) -> None:
        super().__init__(id="RDN", name="RDN", detect=_guarded(_rdn_params, lambda p: RDN(**p)))

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[RDN]:
        params = _rdn_params(state_dict)
        if params is None:
            raise _not_detected("RDN")
        model = RDN(**params)
        tags = [f"D{params['D']}", f"C{params['C']}", f"G{params['G']}", f"G0_{params['G0']}", params["layout"]]
        return _describe(model, state_dict, self, tags, params["in_channels"])


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------

#: Detection order. Every detector demands an exact key-and-shape match, so no two of these
#: (nor any spandrel detector) accept the same file and the order among them is free. EDSR is
#: nevertheless placed before spandrel's RCAN, whose detector only asks for a few keys: should a
#: future RCAN check loosen, an EDSR file must still reach EDSR first.
ARCH_SUPPORTS: list[ArchSupport] = [
    ArchSupport.from_architecture(EDSRArch(), before=(ArchId("RCAN"),)),
    ArchSupport.from_architecture(RDNArch()),
    ArchSupport.from_architecture(ESPCNArch()),
    ArchSupport.from_architecture(FSRCNNArch()),
    ArchSupport.from_architecture(SRCNNArch()),
]

__all__ = [
    "ARCH_SUPPORTS",
    "EDSR",
    "EDSRArch",
    "ESPCN",
    "ESPCNArch",
    "FSRCNN",
    "FSRCNNArch",
    "MeanShift",
    "RDN",
    "RDNArch",
    "RDN_LAYOUTS",
    "SRCNN",
    "SRCNNArch",
    "edsr_rgb_range",
    "receptive_radius",
]
