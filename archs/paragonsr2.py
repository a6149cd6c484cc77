"""ParagonSR2 (Philip Hofmann, MIT): a dual-path super-resolution generator, written from its spec.

Two families are supported, both detected from state-dict keys alone:

* The current **dual-path** family (Dec 2025 onward; variants realtime / stream / photo / pro)::

      out = base(x) + detail_gain * conv_out(PixelShuffle(up.0(conv_mid(body(conv_in(x))))))

  `base` is the fixed MagicKernelSharp2021 upsampler (zero padding; its `upsampler_alpha` is
  not stored in checkpoints: default 0.0, the value every official fidelity release was
  trained with, overridable through `LoadHints.upsampler_alpha`). The body is a plain stack of
  groups of blocks (no group or global skip). Files from the 2025-12-20..26 code (v9/v10) lack
  the realtime/stream LayerScale keys (`scale.gamma`); those are built *without* the LayerScale
  modules, which computes exactly what gamma = 1 would, and still loads strictly.

* The older **"v5"** content-aware family (nano .. xl; keys `content_processor.*`,
  `magic_upsampler.*`, `upsampler_net.*`), as `ParagonSR2V5`. Its `upsampler_alpha` defaults
  to the upstream factory default of the variant recognised from the channel count.

Recognised but refused (`RecognisedButUnsupportedError`): the MUNet discriminator, the
2025-12-15..17 "v6-v8" layout, the pre-dual-path traiNNer-redux fork era (history v0-v4, the
Nov 2025 nano pretrain), ParagonSR v1, the dev-branch "ultimate" variant and the ATD-based
"pro" of commit 91de511. Not stored and not detectable: the attention window (16; "pro"
files from the 2025-12-27 code used 8 and will not reproduce) and `upsampler_alpha`. The
scale always comes from the weights; a scale hint is ignored.

Video ("feature tap") interface of the dual-path model:
`forward(x, feature_tap=False, prev_feat=None, alpha=0.2)`. The carried feature is the LR
feature after the temporal blend, `(B, num_feat, H, W)`:
`f_t = (1 - alpha) * conv_in(x_t) + alpha * f_{t-1}`. First frame (and after a scene cut):
pass `prev_feat=None`, which means no blending at all (the upstream PyTorch convention). The
upstream TensorRT/ONNX pipeline instead feeds zeros on the first frame
(f = 0.8 * conv_in(x)); `zero_feature(x)` gives that tensor for anyone who needs to match it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spandrel import ArchSupport, ImageModelDescriptor, ModelTiling, StateDict
from torch import nn

from .base import LoadHints, NativeArchitecture, RecognisedButUnsupportedError
from .magic_kernel import BLUR_TAPS, SHARP_TAPS, MagicKernelSharp2021Upsample
from .windows import from_windows, gathers_allowed, in_place_allowed, to_windows, window_order

VARIANTS = ("realtime", "stream", "photo", "pro")
DEFAULT_UPSAMPLER_ALPHA = 0.0
DEFAULT_TEMPORAL_ALPHA = 0.2
ATTENTION_HEADS = 4
WINDOW_SIZE = 16
RMS_EPS = 1e-6
FP16_LIMIT = 65504.0

# Tiling margins for models whose receptive field is not finite (attention, global pooling):
# the floor is one attention window, the recommendation two windows or the convolutional
# radius, whichever is larger, capped so margins stay affordable.
MARGIN_CAP = 64

# ---------------------------------------------------------------------------------------------
# Dual-path building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Channel RMS norm of NCHW features, statistics in fp32: `scale * x / rms + bias`."""

    def __init__(self, channels: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.float().square().mean(dim=1, keepdim=True)
        rms = torch.sqrt(mean_square + self.eps).to(x.dtype)
        if not in_place_allowed():
            return self.scale * x / rms + self.bias
        return (self.scale * x).div_(rms).add_(self.bias)  # the same arithmetic, one feature map


class LayerScale(nn.Module):
    """Per-channel residual scale, `gamma` of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _scaled(layer_scale: LayerScale | None, x: torch.Tensor) -> torch.Tensor:
    """Applies an optional LayerScale; a missing one (v9/v10 files) is gamma = 1."""
    return x if layer_scale is None else layer_scale(x)


def _residual(x: torch.Tensor, layer_scale: LayerScale | None, update: torch.Tensor) -> torch.Tensor:
    """`x + gamma * update` for a freshly computed `update`.

    Without autograd it is computed in `update`'s own memory (same operations, same results),
    which saves two feature maps per block: on a CPU each new one costs page faults, in a host's
    worker thread on every forward.
    """
    if not in_place_allowed() or update.dtype != x.dtype or update.stride() != x.stride() or update.shape != x.shape:
        return x + _scaled(layer_scale, update)
    if layer_scale is not None:
        update.mul_(layer_scale.gamma)
    return update.add_(x)


class WindowAttention(nn.Module):
    """Non-overlapping window self-attention on (B, H, W, C) tokens, any H and W.

    Features are zero-padded bottom/right to a multiple of the window, optionally rolled by
    `-shift` (no mask: rolled-in tokens and padding tokens take part as keys and values, as
    upstream), attended per window with `num_heads` heads and the default 1/sqrt(head_dim)
    scale, then rolled back and cropped to the input size.
    """

    def __init__(self, dim: int, num_heads: int = ATTENTION_HEADS, window_size: int = WINDOW_SIZE, shift_size: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gathers_allowed():
            return self._gathered(x)
        b, h, w, c = x.shape
        ws = self.window_size
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))

        rows, cols, n = hp // ws, wp // ws, ws * ws
        tokens = x.reshape(b, rows, ws, cols, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        q, k, v = self.qkv(tokens).reshape(-1, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        tokens = self.proj(attended.transpose(1, 2).reshape(-1, n, c))
        x = tokens.reshape(b, rows, cols, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)

        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        return x[:, :h, :w, :]

    def _gathered(self, x: torch.Tensor) -> torch.Tensor:
        """The same attention with padding, shift and window partition done by one gather, and
        the way back by another; `proj` then runs on the image's own tokens only.

        The plain form above copies the feature map about ten times per block (pad, two rolls
        each way, partition, head split, merge); on a CPU, where every fresh feature map is
        also paid for in page faults, that cost as much as the attention itself. Same
        operations on the same windows, so the same numbers to fp32 rounding (tested against
        the plain form).
        """
        b, h, w, c = x.shape
        n = self.window_size**2
        order = window_order(h, w, self.window_size, self.shift_size, x.device)
        # as one matrix: Linear on (windows, n, C) took a much slower path in fp32
        # (benchmarks/README.md, "Attention windows")
        qkv = self.qkv(to_windows(x.reshape(b, h * w, c), order, n).view(-1, c)).view(-1, n, 3 * c)
        q, k, v = qkv.reshape(-1, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, n, c)
        return self.proj(from_windows(attended, order, b)).reshape(b, h, w, c)


def _window_attend(norm: RMSNorm, attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """NCHW -> norm -> tokens-last window attention -> NCHW."""
    return attn(norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvMixer(nn.Module):
    """The shared inverted-bottleneck: 1x1 expand, 3x3 depthwise, exact GELU, 1x1 project."""

    conv1: nn.Conv2d
    dw: nn.Conv2d
    conv2: nn.Conv2d

    def _build_mixer(self, dim: int, hidden: int) -> None:
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dw(self.conv1(x))
        return self.conv2(torch.ops.aten.gelu_(hidden) if in_place_allowed() else F.gelu(hidden))


class NanoBlock(_ConvMixer):
    """realtime: `x + gamma * conv2(GELU(dw(conv1(x))))`."""

    def __init__(self, dim: int, hidden: int, layer_scale: bool = True):
        super().__init__()
        self._build_mixer(dim, hidden)
        self.scale = LayerScale(dim) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual(x, self.scale, self._mix(x))


class StreamBlock(nn.Module):
    """stream: dual-dilation depthwise context, fuse, gated 1x1/depthwise pair, project.

    The gate product runs in fp32 and is clamped to the fp16 range, as upstream.
    """

    def __init__(self, dim: int, hidden: int, layer_scale: bool = True):
        super().__init__()
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dw3 = nn.Conv2d(dim, dim, 3, padding=3, dilation=3, groups=dim)
        self.fuse = nn.Conv2d(dim * 2, dim, 1)
        self.proj = nn.Conv2d(dim, hidden * 2, 1)
        self.gate = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.out = nn.Conv2d(hidden, dim, 1)
        self.scale = LayerScale(dim) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat((self.dw1(x), self.dw3(x)), dim=1))
        a, b = self.gate(self.proj(y)).chunk(2, dim=1)
        product = (a.float() * b.float()).clamp(-FP16_LIMIT, FP16_LIMIT).to(a.dtype)
        return _residual(x, self.scale, self.out(product))


class PhotoBlock(_ConvMixer):
    """photo: normed conv mixer, then (optional) normed window attention; ONE gamma for both."""

    def __init__(self, dim: int, hidden: int, attention: bool, window_size: int, shift_size: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self._build_mixer(dim, hidden)
        self.scale = LayerScale(dim)
        if attention:
            self.attn_norm = RMSNorm(dim)
            self.attn = WindowAttention(dim, ATTENTION_HEADS, window_size, shift_size)
        self.has_attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _residual(x, self.scale, self._mix(self.norm(x)))
        if self.has_attention:
            x = _residual(x, self.scale, _window_attend(self.attn_norm, self.attn, x))
        return x


class ChannelAttention(nn.Module):
    """Squeeze-excitation weights `sigmoid(fc.2(GELU(fc.0(mean_HW(x)))))`, returns `x * w`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class TokenDictionaryCA(nn.Module):
    """Cross-attention from every pixel to a learned, image-independent token dictionary."""

    def __init__(self, dim: int, num_tokens: int, reduced_dim: int):
        super().__init__()
        self.token_dict = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.q_proj = nn.Linear(dim, reduced_dim)
        self.k_proj = nn.Linear(dim, reduced_dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.logit_scale = reduced_dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pixels = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        keys = self.k_proj(self.token_dict)  # (1, T, d)
        values = self.v_proj(self.token_dict)  # (1, T, C)
        weights = torch.softmax(self.q_proj(pixels) @ keys.transpose(-2, -1) * self.logit_scale, dim=-1)
        out = self.out_proj(weights @ values)  # (B, HW, C)
        return out.transpose(1, 2).reshape(b, c, h, w)


class ProBlock(_ConvMixer):
    """pro: conv mixer, additive SE channel attention, optional window attention, token CA."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        attention: bool,
        window_size: int,
        shift_size: int,
        se_hidden: int,
        num_tokens: int,
        token_dim: int,
    ):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self._build_mixer(dim, hidden)
        self.scale1 = LayerScale(dim)
        self.channel_attn = ChannelAttention(dim, se_hidden)
        self.scale2 = LayerScale(dim)
        if attention:
            self.norm3 = RMSNorm(dim)
            self.window_attn = WindowAttention(dim, ATTENTION_HEADS, window_size, shift_size)
            self.scale3 = LayerScale(dim)
        self.has_attention = attention
        self.norm4 = RMSNorm(dim)
        self.token_ca = TokenDictionaryCA(dim, num_tokens, token_dim)
        self.scale4 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _residual(x, self.scale1, self._mix(self.norm1(x)))
        x = _residual(x, self.scale2, self.channel_attn(x))
        if self.has_attention:
            x = _residual(x, self.scale3, _window_attend(self.norm3, self.window_attn, x))
        return _residual(x, self.scale4, self.token_ca(self.norm4(x)))


class ResidualGroup(nn.Module):
    """A named container (`.blocks`); despite the name, upstream adds no skip here."""

    def __init__(self, blocks: Iterable[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


# ---------------------------------------------------------------------------------------------
# Dual-path model
# ---------------------------------------------------------------------------------------------


class ParagonSR2(nn.Module):
    """ParagonSR2 dual-path generator. (B, in_chans, H, W) in [0, 1] -> (B, in_chans, sH, sW), no clamp.

    Hyper-parameters are those `ParagonSR2Arch` reads from a state dict; `attention=False`
    builds photo/pro without window attention (files saved with `export_safe=True`), and
    `layer_scale=False` builds realtime/stream without `scale.gamma` (v9/v10 files).
    """

    supports_temporal = True
    #: NHWC input for every variant: the convolutions run faster, and the attention of photo/pro
    #: works on tokens-last features, which NHWC memory already is (no permute copies).
    #: Figures: benchmarks/README.md, "Layout".
    prefers_channels_last = True

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        num_feat: int = 64,
        num_groups: int = 4,
        num_blocks: int = 4,
        variant: str = "photo",
        detail_gain: float = 0.1,
        upsampler_alpha: float = DEFAULT_UPSAMPLER_ALPHA,
        attention: bool = True,
        layer_scale: bool = True,
        window_size: int = WINDOW_SIZE,
        hidden: int | None = None,
        se_hidden: int | None = None,
        num_tokens: int = 64,
        token_dim: int = 16,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown ParagonSR2 variant {variant!r}; expected one of {VARIANTS}")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"ParagonSR2 needs a positive integer scale, got {scale}")
        hidden = hidden or num_feat * 2

        self.variant = variant
        self.scale = int(scale)
        self.in_chans = in_chans
        self.num_feat = num_feat
        self.num_groups = num_groups
        self.num_blocks = num_blocks
        self.has_attention = attention and variant in ("photo", "pro")
        self.layer_scale = layer_scale or variant in ("photo", "pro")
        self.window_size = window_size
        self.temporal_alpha = DEFAULT_TEMPORAL_ALPHA

        self.base = MagicKernelSharp2021Upsample(in_chans, self.scale, upsampler_alpha)
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, padding=1)

        def make_block(index: int) -> nn.Module:
            # Odd global block indices use shifted windows (photo/pro).
            shift = window_size // 2 if index % 2 else 0
            if variant == "realtime":
                return NanoBlock(num_feat, hidden, layer_scale)
            if variant == "stream":
                return StreamBlock(num_feat, hidden, layer_scale)
            if variant == "photo":
                return PhotoBlock(num_feat, hidden, self.has_attention, window_size, shift)
            return ProBlock(
                num_feat,
                hidden,
                self.has_attention,
                window_size,
                shift,
                se_hidden or max(1, num_feat // 16),
                num_tokens,
                token_dim,
            )

        self.body = nn.Sequential(
            *(ResidualGroup(make_block(g * num_blocks + b) for b in range(num_blocks)) for g in range(num_groups))
        )
        self.conv_mid = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.up = nn.Sequential(
            nn.Conv2d(num_feat, num_feat * self.scale**2, 3, padding=1), nn.PixelShuffle(self.scale)
        )
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, padding=1)
        self.detail_gain = nn.Parameter(torch.tensor(float(detail_gain)))

    # -- configuration not stored in checkpoints -------------------------------------------

    @property
    def upsampler_alpha(self) -> float:
        """The base path's pre-sharpen blend (0 = off). Not stored in checkpoints."""
        return self.base.alpha

    @upsampler_alpha.setter
    def upsampler_alpha(self, value: float) -> None:
        self.base.alpha = float(value)

    # -- tiling hints --------------------------------------------------------------------------

    @property
    def conv_radius(self) -> int:
        """LR pixels each side that reach an output pixel through the convolutions alone."""
        per_block = {"realtime": 1, "stream": 4, "photo": 1, "pro": 1}[self.variant]
        detail = 1 + per_block * self.num_groups * self.num_blocks + 1 + 1 + 1  # in, body, mid, up.0, out
        return max(detail, self.base.receptive_radius)

    @property
    def receptive_radius(self) -> int | None:
        """Exact LR receptive radius, or None when attention (wrapping shifted windows) or pro's
        global channel attention make every output depend on the whole input."""
        unbounded = self.variant == "pro" or (self.variant == "photo" and self.has_attention)
        return None if unbounded else self.conv_radius

    @property
    def global_context(self) -> bool:
        """True when every output depends on the whole input (see `receptive_radius`): the
        engine then runs whole images when memory allows, and tiles only to fit."""
        return self.receptive_radius is None

    @property
    def min_tile_margin(self) -> int:
        """Smallest tiling margin (LR px) to use: the exact radius, or one attention window."""
        radius = self.receptive_radius
        return radius if radius is not None else self.window_size

    @property
    def receptive_hint(self) -> int:
        """Recommended tiling margin (LR px): exact radius, else max(2 windows, conv radius), capped."""
        radius = self.receptive_radius
        if radius is not None:
            return radius
        return max(self.min_tile_margin, min(max(2 * self.window_size, self.conv_radius), MARGIN_CAP))

    # -- video -----------------------------------------------------------------------------

    def zero_feature(self, x: torch.Tensor) -> torch.Tensor:
        """The all-zero previous feature the upstream TensorRT/ONNX pipeline uses on frame one."""
        b, _, h, w = x.shape
        return x.new_zeros(b, self.num_feat, h, w)

    def forward(
        self,
        x: torch.Tensor,
        feature_tap: bool = False,
        prev_feat: torch.Tensor | None = None,
        alpha: float = DEFAULT_TEMPORAL_ALPHA,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """SR output; with `feature_tap`, also the post-blend LR feature (B, num_feat, H, W).

        `prev_feat` (the previous frame's tapped feature, same shape) is blended in as
        `(1 - alpha) * conv_in(x) + alpha * prev_feat`; None means no blending (first frame).
        """
        base = self.base(x)
        feat = self.conv_in(x)
        if prev_feat is not None:
            if prev_feat.shape != feat.shape:
                raise ValueError(f"prev_feat has shape {tuple(prev_feat.shape)}, expected {tuple(feat.shape)}")
            feat = (1.0 - alpha) * feat + alpha * prev_feat.to(feat)
        detail = self.conv_out(self.up(self.conv_mid(self.body(feat))))
        out = base + detail * self.detail_gain
        return (out, feat) if feature_tap else out


# ---------------------------------------------------------------------------------------------
# v5 ("Phase 3" content-aware) family
# ---------------------------------------------------------------------------------------------

# Upstream factory defaults by channel count: (variant name, upsampler_alpha).
V5_FACTORY = {
    12: ("nano", 0.4),
    16: ("micro", 0.45),
    24: ("tiny", 0.5),
    32: ("xs", 0.5),
    48: ("s", 0.5),
    64: ("m", 0.5),
    96: ("l", 0.55),
    128: ("xl", 0.6),
}
V5_CLASS_DEFAULT_ALPHA = 0.5
V5_WINDOW = 32
V5_OVERLAP = 8
V5_MIN_GAIN = 0.05
V5_MAX_GAIN = 0.2


class _FixedSeparable(nn.Module):
    """v5 key layout of a fixed separable filter: `conv_h` (1 x k) then `conv_v` (k x 1)."""

    def __init__(self, channels: int, taps: tuple[float, ...]):
        super().__init__()
        k = len(taps)
        kernel = torch.tensor(taps, dtype=torch.float32)
        self.conv_h = nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels, bias=False)
        self.conv_v = nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels, bias=False)
        with torch.no_grad():
            self.conv_h.weight.copy_(kernel.view(1, 1, 1, k).expand(channels, 1, 1, k))
            self.conv_v.weight.copy_(kernel.view(1, 1, k, 1).expand(channels, 1, k, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_v(self.conv_h(x))


class V5MagicKernel(nn.Module):
    """The v5 base path (`sharpen`, `resample_conv`); alpha is clamped to [0, 1] as upstream."""

    def __init__(self, channels: int, scale: int, alpha: float):
        super().__init__()
        self.scale = scale
        self.alpha = alpha
        self.sharpen = _FixedSeparable(channels, SHARP_TAPS)
        self.resample_conv = _FixedSeparable(channels, BLUR_TAPS)

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = min(max(float(value), 0.0), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha > 0:
            x = x + self.alpha * (self.sharpen(x) - x)
        return self.resample_conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class V5ContentProcessor(nn.Module):
    """Maps the LR image to one detail gain per image in [0.05, 0.2] (low complexity -> high gain)."""

    def __init__(self, in_chans: int, width1: int, width2: int):
        super().__init__()
        self.content_analyzer = nn.Sequential(
            nn.Conv2d(in_chans, width1, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width1, width2, 5, 1, 2),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width2, width2, 7, 1, 3),
            nn.LeakyReLU(0.1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(width2, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        complexity = self.content_analyzer(x)
        return V5_MIN_GAIN + (V5_MAX_GAIN - V5_MIN_GAIN) * (1 - complexity)


class V5InceptionContext(nn.Module):
    """Identity on the first C - 3g channels; 3x3, 1xk and kx1 depthwise convs on three g-slices."""

    def __init__(self, dim: int, branch: int, square: int, band: int):
        super().__init__()
        self.dwconv_hw = nn.Conv2d(branch, branch, square, padding=square // 2, groups=branch)
        self.dwconv_w = nn.Conv2d(branch, branch, (1, band), padding=(0, band // 2), groups=branch)
        self.dwconv_h = nn.Conv2d(branch, branch, (band, 1), padding=(band // 2, 0), groups=branch)
        self.split = [dim - 3 * branch, branch, branch, branch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, hw, w, h = torch.split(x, self.split, dim=1)
        return torch.cat((keep, self.dwconv_hw(hw), self.dwconv_w(w), self.dwconv_h(h)), dim=1)


class V5ChannelModulation(nn.Module):
    """SE gate with ReLU inside: `x * sigmoid(net.3(relu(net.1(mean_HW(x)))))`."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, inner, 1), nn.ReLU(), nn.Conv2d(inner, dim, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.net(x)


class V5LocalWindowAttention(nn.Module):
    """v5's reduced-key attention with a learned residual weight `gamma`.

    Small maps (H and W <= window) attend globally. Larger maps are covered by a grid of
    windows (size <= 32, stride window - overlap) whose outputs are blended with linear edge
    fades and divided by the summed weights (+1e-8). The upstream grid formula can leave the
    last rows/columns uncovered; there the attention term is zero. Reproduced as is, because
    trained weights depend on it. Logits are scaled by 1/sqrt(tokens in the window).
    """

    def __init__(self, channels: int, reduced: int, window_size: int = V5_WINDOW, overlap: int = V5_OVERLAP):
        super().__init__()
        self.query = nn.Conv2d(channels, reduced, 1)
        self.key = nn.Conv2d(channels, reduced, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.window_size = window_size
        self.overlap = overlap

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v.shape
        n = h * w
        logits = q.reshape(b, -1, n).transpose(1, 2) @ k.reshape(b, -1, n) / n**0.5  # (B, N, N)
        return (v.reshape(b, c, n) @ torch.softmax(logits, dim=-1).transpose(1, 2)).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        if h <= self.window_size and w <= self.window_size:
            return x + self.gamma * self._attend(q, k, v)

        win_h, win_w = min(self.window_size, h), min(self.window_size, w)
        ov_h = min(self.overlap, win_h // 4, h // 4)
        ov_w = min(self.overlap, win_w // 4, w // 4)
        count_h = (h + ov_h - 1) // (win_h - ov_h)
        count_w = (w + ov_w - 1) // (win_w - ov_w)

        total = torch.zeros_like(x)
        weight_sum = torch.zeros_like(x)
        for i in range(count_h):
            top = i * (win_h - ov_h)
            bottom = min(h, top + win_h)
            for j in range(count_w):
                left = j * (win_w - ov_w)
                right = min(w, left + win_w)
                region = (slice(None), slice(None), slice(top, bottom), slice(left, right))
                out = self._attend(q[region], k[region], v[region])
                weight = self._fade(out, top, bottom, h, ov_h, left, right, w, ov_w)
                total[region] += weight * out
                weight_sum[region] += weight
        return x + self.gamma * (total / (weight_sum + 1e-8))

    @staticmethod
    def _fade(
        out: torch.Tensor, top: int, bottom: int, h: int, ov_h: int, left: int, right: int, w: int, ov_w: int
    ) -> torch.Tensor:
        """Blend weights for one window: linear ramps on the sides that have a neighbour."""
        weight = torch.ones_like(out)
        rows = min(ov_h, (bottom - top) // 4)
        cols = min(ov_w, (right - left) // 4)
        ramp = {"dtype": out.dtype, "device": out.device}
        if ov_h > 0 and rows > 0:
            if top > 0:
                weight[:, :, :rows, :] *= torch.linspace(0, 1, rows, **ramp).view(1, 1, rows, 1)
            if bottom < h:
                weight[:, :, -rows:, :] *= torch.linspace(1, 0, rows, **ramp).view(1, 1, rows, 1)
        if ov_w > 0 and cols > 0:
            if left > 0:
                weight[:, :, :, :cols] *= torch.linspace(0, 1, cols, **ramp).view(1, 1, 1, cols)
            if right < w:
                weight[:, :, :, -cols:] *= torch.linspace(1, 0, cols, **ramp).view(1, 1, 1, cols)
        return weight


class V5Transformer(nn.Module):
    """project_in -> depthwise mixer -> [attention] -> [channel modulation] -> project_out."""

    def __init__(self, dim: int, hidden: int, channel_mod: int | None, attention: int | None):
        super().__init__()
        self.project_in = nn.Conv2d(dim, hidden, 1)
        self.dw_mixer = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.LeakyReLU(0.1), nn.Conv2d(hidden, hidden, 1)
        )
        self.channel_mod = V5ChannelModulation(hidden, channel_mod) if channel_mod else nn.Identity()
        self.attention = V5LocalWindowAttention(hidden, attention) if attention else nn.Identity()
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.dw_mixer(self.project_in(x)))
        return self.project_out(self.channel_mod(x))


class V5RMSNorm(nn.Module):
    """v5 norm (applied after the block): `scale * x / (||x||_C / sqrt(C) + eps) + offset`."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.offset = nn.Parameter(torch.zeros(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=1, keepdim=True) * x.shape[1] ** -0.5
        return self.scale * (x / (rms + self.eps)) + self.offset


@dataclass(frozen=True)
class V5BlockConfig:
    """Per-block shape facts read from a v5 state dict (the same for every block).

    `branch`: channels of each depthwise context slice; `square`/`band`: their kernel sizes;
    `hidden`: transformer width; `channel_mod`/`attention`: reduced widths, None when absent.
    """

    branch: int
    square: int
    band: int
    hidden: int
    channel_mod: int | None
    attention: int | None
    norm: bool


class V5Block(nn.Module):
    """`x + ls1(context(x))`, then `+ ls2(transformer(.))`, then the optional norm."""

    def __init__(self, dim: int, config: V5BlockConfig):
        super().__init__()
        self.context = V5InceptionContext(dim, config.branch, config.square, config.band)
        self.ls1 = LayerScale(dim)
        self.transformer = V5Transformer(dim, config.hidden, config.channel_mod, config.attention)
        self.ls2 = LayerScale(dim)
        self.norm = V5RMSNorm(dim) if config.norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.context(x))
        x = x + self.ls2(self.transformer(x))
        return x if self.norm is None else self.norm(x)


class V5Group(nn.Module):
    """Blocks with a group-level skip (unlike the dual-path family)."""

    def __init__(self, dim: int, num_blocks: int, config: V5BlockConfig):
        super().__init__()
        self.blocks = nn.Sequential(*(V5Block(dim, config) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + x


class V5PixelShufflePack(nn.Module):
    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.up_conv = nn.Conv2d(channels, channels * scale * scale, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.up_conv(x))


class ParagonSR2V5(nn.Module):
    """ParagonSR2 "v5" (nano .. xl): `magic(x) + gain(x) * conv_out(PS(up(conv_fuse(f) + f)))`,
    f = body(conv_in(x)), gain from the content processor (or 1 without one). No clamp."""

    supports_temporal = False

    def __init__(
        self,
        scale: int,
        num_feat: int,
        num_groups: int,
        num_blocks: int,
        block: V5BlockConfig,
        content_widths: tuple[int, int] | None,
        upsampler_alpha: float,
        in_chans: int = 3,
        variant: str = "custom",
    ):
        super().__init__()
        self.variant = variant
        self.scale = scale
        self.in_chans = in_chans
        self.num_feat = num_feat
        self.num_groups = num_groups
        self.num_blocks = num_blocks
        self.has_attention = block.attention is not None
        self._block = block

        self.content_processor = V5ContentProcessor(in_chans, *content_widths) if content_widths else None
        self.conv_in = nn.Conv2d(in_chans, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(V5Group(num_feat, num_blocks, block) for _ in range(num_groups)))
        self.conv_fuse = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsampler_net = V5PixelShufflePack(num_feat, scale)
        self.conv_out = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.magic_upsampler = V5MagicKernel(in_chans, scale, upsampler_alpha)

    @property
    def upsampler_alpha(self) -> float:
        return self.magic_upsampler.alpha

    @upsampler_alpha.setter
    def upsampler_alpha(self, value: float) -> None:
        self.magic_upsampler.alpha = value

    @property
    def conv_radius(self) -> int:
        per_block = max(self._block.square // 2, self._block.band // 2) + 1  # context, then dw_mixer
        detail = 1 + per_block * self.num_groups * self.num_blocks + 1 + 1 + 1
        base = (3 if self.upsampler_alpha > 0 else 0) + -(-2 // self.scale)
        return max(detail, base)

    @property
    def receptive_radius(self) -> int | None:
        if self.has_attention or self.content_processor is not None:
            return None
        return self.conv_radius

    @property
    def min_tile_margin(self) -> int:
        radius = self.receptive_radius
        if radius is not None:
            return radius
        return V5_WINDOW if self.has_attention else min(self.conv_radius, MARGIN_CAP)

    @property
    def receptive_hint(self) -> int:
        radius = self.receptive_radius
        if radius is not None:
            return radius
        return max(self.min_tile_margin, min(self.conv_radius, MARGIN_CAP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.magic_upsampler(x)
        feat = self.conv_in(x)
        deep = self.body(feat)
        detail = self.conv_out(self.upsampler_net(self.conv_fuse(deep) + deep))
        if self.content_processor is not None:
            detail = detail * self.content_processor(x)
        return base + detail


# ---------------------------------------------------------------------------------------------
# Recognising checkpoints
# ---------------------------------------------------------------------------------------------

DUAL_PATH_KEYS = (
    "detail_gain",
    "base.blur.h.weight",
    "base.sharp.h.weight",
    "conv_in.weight",
    "conv_mid.weight",
    "up.0.weight",
    "conv_out.weight",
)
V5_KEYS = (
    "conv_in.weight",
    "conv_fuse.weight",
    "upsampler_net.up_conv.weight",
    "conv_out.weight",
    "magic_upsampler.resample_conv.conv_h.weight",
    "magic_upsampler.sharpen.conv_h.weight",
)

UNSUPPORTED_MESSAGES = {
    "munet": (
        "this is MUNet, the discriminator used to train ParagonSR2 GAN models, not an upscaler; "
        "load the generator checkpoint of the same training run instead (traiNNer-redux names it net_g_*)"
    ),
    "ultimate": (
        "this is the ParagonSR2 'ultimate' variant from the upstream dev branch (gated_conv blocks "
        "/ final_norm); two incompatible versions of it exist and none is supported here; use a "
        "realtime, stream, photo or pro ParagonSR2 release instead"
    ),
    "atd-pro": (
        "this is the ParagonSR2 'pro' layout of commit 91de511 (2025-12-26: ATD transformer blocks, "
        "body.G.layers.*), which no release used and which is not supported; use the released pro "
        "layout (body.G.blocks.B.token_ca.*) or another ParagonSR2 variant"
    ),
    "v6-v8": (
        "this is a ParagonSR2 checkpoint from the 2025-12-15..17 code (v6-v8 layout: "
        "global_detail_gain, base_upsampler, detail_upsampler); those blocks compute differently "
        "from the released architecture, so it cannot be run faithfully; use a current ParagonSR2 "
        "release (realtime/stream/photo/pro) or retrain with the current code"
    ),
    "fork": (
        "this is a pre-dual-path ParagonSR2 checkpoint from the traiNNer-redux fork (Nov 2025, "
        "ParagonBlockV2 / static blocks with magic_upsampler on features); that layout is not "
        "supported (its scale is not even stored in the weights); use a current ParagonSR2 release"
    ),
    "paragonsr-v1": (
        "this is a ParagonSR (v1) checkpoint (gated FFN blocks with project_in_g/project_in_i), a "
        "different architecture from ParagonSR2 that is not supported here"
    ),
}

_BLOCK_KEY = re.compile(r"^body\.(\d+)\.blocks\.(\d+)\.(.+)$")


def _block_layout(state_dict: StateDict) -> tuple[int, int, set[str]]:
    """(groups, blocks in group 0, parameter names inside body.0.blocks.0)."""
    groups: set[int] = set()
    blocks: set[int] = set()
    first: set[str] = set()
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match is None:
            continue
        g, b, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        groups.add(g)
        if g == 0:
            blocks.add(b)
            if b == 0:
                first.add(rest)
    return len(groups), len(blocks), first


def _has_prefix(state_dict: StateDict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state_dict)


def classify(state_dict: StateDict) -> str | None:
    """Names the ParagonSR-family layout of a state dict, or None if it is not one.

    "dual-path" and "v5" are supported; "munet", "ultimate", "atd-pro", "v6-v8", "fork"
    and "paragonsr-v1" are recognised but refused.
    """
    keys = state_dict.keys()
    if all(k in keys for k in DUAL_PATH_KEYS):
        if "final_norm.weight" in keys or any(".gated_conv." in k for k in keys if k.startswith("body.")):
            return "ultimate"
        if any(re.match(r"body\.\d+\.layers\.", k) for k in keys):
            return "atd-pro"
        return "dual-path"
    if all(k in keys for k in V5_KEYS):
        return "v5"
    if "in_conv.weight" in keys or "in_conv.parametrizations.weight.original" in keys or "in_conv.weight_orig" in keys:
        if _has_prefix(state_dict, "down_blocks.") and _has_prefix(state_dict, "up_blocks."):
            if (
                any(".magic_upsample." in k for k in keys)
                or "freq_luma.weight" in keys
                or _has_prefix(state_dict, "attention_fusion.")
            ):
                return "munet"
    if "conv_in.weight" in keys and (
        "global_detail_gain" in keys
        or (_has_prefix(state_dict, "base_upsampler.") and _has_prefix(state_dict, "detail_upsampler."))
    ):
        return "v6-v8"
    if all(k in keys for k in ("conv_in.weight", "conv_fuse.weight", "conv_out.weight")):
        _, _, first = _block_layout(state_dict)
        if "context.dwconv_hw.weight" in first and "ls1.gamma" in first:
            if any(name.startswith("transformer.project_in_g.") for name in first):
                return "paragonsr-v1"
            return "fork"
    return None


def _refuse(kind: str) -> RecognisedButUnsupportedError:
    return RecognisedButUnsupportedError(f"ParagonSR2: {UNSUPPORTED_MESSAGES[kind]}.")


def _scale_from(up_channels: int, num_feat: int, what: str) -> int:
    ratio, rest = divmod(up_channels, num_feat)
    scale = math.isqrt(ratio) if ratio > 0 else 0
    if rest or scale < 1 or scale * scale != ratio:
        raise RecognisedButUnsupportedError(
            f"ParagonSR2: {what} has {up_channels} output channels, which is not num_feat ({num_feat}) "
            "times a square; the file is damaged or from an unknown variant"
        )
    return scale


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"upsampler_alpha must be a finite number, got {alpha}")
    return alpha


def _hints_alpha(hints: LoadHints | None, default: float) -> float:
    if hints is not None and hints.upsampler_alpha is not None:
        return _check_alpha(hints.upsampler_alpha)
    return default


def read_dual_path_config(state_dict: StateDict) -> dict:
    """ParagonSR2 constructor arguments implied by a dual-path state dict (spec §4.4)."""
    conv_in = state_dict["conv_in.weight"]
    num_feat, in_chans = int(conv_in.shape[0]), int(conv_in.shape[1])
    scale = _scale_from(int(state_dict["up.0.weight"].shape[0]), num_feat, "up.0")
    num_groups, num_blocks, first = _block_layout(state_dict)
    if num_groups == 0 or num_blocks == 0:
        raise RecognisedButUnsupportedError("ParagonSR2: the state dict has no body blocks (body.G.blocks.B.*)")
    prefix = "body.0.blocks.0."
    config: dict = {
        "scale": scale,
        "in_chans": in_chans,
        "num_feat": num_feat,
        "num_groups": num_groups,
        "num_blocks": num_blocks,
    }
    if "token_ca.token_dict" in first:
        token_dict = state_dict[prefix + "token_ca.token_dict"]
        config.update(
            variant="pro",
            attention="window_attn.qkv.weight" in first,
            hidden=int(state_dict[prefix + "conv1.weight"].shape[0]),
            se_hidden=int(state_dict[prefix + "channel_attn.fc.0.weight"].shape[0]),
            num_tokens=int(token_dict.shape[1]),
            token_dim=int(state_dict[prefix + "token_ca.q_proj.weight"].shape[0]),
        )
    elif "dw1.weight" in first:
        config.update(
            variant="stream",
            layer_scale="scale.gamma" in first,
            hidden=int(state_dict[prefix + "out.weight"].shape[1]),
        )
    elif "norm.scale" in first:
        config.update(
            variant="photo",
            attention="attn.qkv.weight" in first,
            hidden=int(state_dict[prefix + "conv1.weight"].shape[0]),
        )
    elif "conv1.weight" in first:
        config.update(
            variant="realtime",
            layer_scale="scale.gamma" in first,
            hidden=int(state_dict[prefix + "conv1.weight"].shape[0]),
        )
    else:
        raise RecognisedButUnsupportedError(
            "ParagonSR2: unknown block type in a dual-path checkpoint (body.0.blocks.0 holds "
            f"{sorted(first)[:8]}); only realtime, stream, photo and pro are supported"
        )
    return config


def read_v5_config(state_dict: StateDict) -> dict:
    """ParagonSR2V5 constructor arguments implied by a v5 state dict."""
    conv_in = state_dict["conv_in.weight"]
    num_feat, in_chans = int(conv_in.shape[0]), int(conv_in.shape[1])
    scale = _scale_from(int(state_dict["upsampler_net.up_conv.weight"].shape[0]), num_feat, "upsampler_net.up_conv")
    num_groups, num_blocks, first = _block_layout(state_dict)
    if num_groups == 0 or num_blocks == 0:
        raise RecognisedButUnsupportedError("ParagonSR2 v5: the state dict has no body blocks (body.G.blocks.B.*)")
    p = "body.0.blocks.0."
    hw = state_dict[p + "context.dwconv_hw.weight"]

    def width(name: str) -> int | None:
        return int(state_dict[p + name].shape[0]) if name in first else None

    block = V5BlockConfig(
        branch=int(hw.shape[0]),
        square=int(hw.shape[-1]),
        band=int(state_dict[p + "context.dwconv_w.weight"].shape[-1]),
        hidden=int(state_dict[p + "transformer.project_in.weight"].shape[0]),
        channel_mod=width("transformer.channel_mod.net.1.weight"),
        attention=width("transformer.attention.query.weight"),
        norm="norm.scale" in first,
    )
    content = None
    if "content_processor.content_analyzer.0.weight" in state_dict:
        content = (
            int(state_dict["content_processor.content_analyzer.0.weight"].shape[0]),
            int(state_dict["content_processor.content_analyzer.2.weight"].shape[0]),
        )
    variant, alpha = V5_FACTORY.get(num_feat, ("custom", V5_CLASS_DEFAULT_ALPHA))
    return {
        "scale": scale,
        "in_chans": in_chans,
        "num_feat": num_feat,
        "num_groups": num_groups,
        "num_blocks": num_blocks,
        "block": block,
        "content_widths": content,
        "variant": variant,
        "upsampler_alpha": alpha,
    }


# ---------------------------------------------------------------------------------------------
# spandrel architectures
# ---------------------------------------------------------------------------------------------

_REFUSED = ("munet", "ultimate", "atd-pro", "v6-v8", "fork", "paragonsr-v1")


class ParagonSR2Arch(NativeArchitecture[ParagonSR2]):
    """Dual-path ParagonSR2; also claims (and refuses with a clear error) related layouts."""

    def __init__(self) -> None:
        super().__init__(id="ParagonSR2", name="ParagonSR2", detect=self._detect)

    @staticmethod
    def _detect(state_dict: StateDict) -> bool:
        kind = classify(state_dict)
        return kind == "dual-path" or kind in _REFUSED

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[ParagonSR2]:
        kind = classify(state_dict)
        if kind in _REFUSED:
            raise _refuse(kind)
        if kind != "dual-path":
            raise ValueError(
                "not a dual-path ParagonSR2 state dict (missing detail_gain/base/conv_in/conv_mid/up.0/conv_out)"
            )
        config = read_dual_path_config(state_dict)
        model = ParagonSR2(**config, upsampler_alpha=_hints_alpha(hints, DEFAULT_UPSAMPLER_ALPHA))
        tags = [model.variant, f"{model.num_feat}nf", f"{model.num_groups}x{model.num_blocks}"]
        if model.variant in ("photo", "pro") and not model.has_attention:
            tags.append("no-attention")
        if model.variant in ("realtime", "stream") and not model.layer_scale:
            tags.append("no-layerscale")
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=tags,
            supports_half=False,  # spec §7: fp16 is opt-in with an fp32 fallback, not a safe default
            supports_bfloat16=True,
            scale=model.scale,
            input_channels=model.in_chans,
            output_channels=model.in_chans,
            tiling=ModelTiling.SUPPORTED,
        )


class ParagonSR2V5Arch(NativeArchitecture[ParagonSR2V5]):
    """The older "v5" content-aware ParagonSR2 family (nano .. xl)."""

    def __init__(self) -> None:
        super().__init__(id="ParagonSR2v5", name="ParagonSR2 (v5)", detect=self._detect)

    @staticmethod
    def _detect(state_dict: StateDict) -> bool:
        return classify(state_dict) == "v5"

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[ParagonSR2V5]:
        if classify(state_dict) != "v5":
            raise ValueError("not a ParagonSR2 v5 state dict")
        config = read_v5_config(state_dict)
        config["upsampler_alpha"] = _hints_alpha(hints, config["upsampler_alpha"])
        model = ParagonSR2V5(**config)
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=[model.variant, f"{model.num_feat}nf", f"{model.num_groups}x{model.num_blocks}"],
            supports_half=False,  # unnormalised fp32-only reductions (norms, N x N attention); untested in fp16
            supports_bfloat16=True,
            scale=model.scale,
            input_channels=model.in_chans,
            output_channels=model.in_chans,
            # one content gain per image: tiles get different gains, so tile only when needed
            tiling=ModelTiling.DISCOURAGED if model.content_processor is not None else ModelTiling.SUPPORTED,
        )


# No spandrel detector matches any ParagonSR-family layout (checked against spandrel 0.4.2's
# MAIN_REGISTRY for the fixtures and for every upstream layout), so nothing needs to precede
# anything: appended after spandrel's own detectors, ours only see what spandrel leaves.
ARCH_SUPPORTS: list[ArchSupport] = [
    ArchSupport.from_architecture(ParagonSR2Arch()),
    ArchSupport.from_architecture(ParagonSR2V5Arch()),
]

__all__ = [
    "ARCH_SUPPORTS",
    "DEFAULT_TEMPORAL_ALPHA",
    "DEFAULT_UPSAMPLER_ALPHA",
    "ParagonSR2",
    "ParagonSR2Arch",
    "ParagonSR2V5",
    "ParagonSR2V5Arch",
    "classify",
]
