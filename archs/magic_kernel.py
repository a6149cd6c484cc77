"""MagicKernelSharp2021: a weight-free classical upscaler (and ParagonSR2's base path).

Recipe (exact taps, default zero padding, as the ParagonSR2 reference uses it):
  1. if alpha > 0: x <- x + alpha * (sharp(x) - x), sharp = separable [-1, 0, 9, 16, 9, 0, -1] / 32
  2. nearest-neighbour upsample by the integer scale (each pixel repeated s x s)
  3. blur = separable [1, 4, 6, 4, 1] / 16
Each separable filter runs horizontally first, then vertically, per channel.

The module tree reproduces ParagonSR2's state-dict keys (`sharp.{kernel,h.weight,v.weight}`,
`blur.{...}`), so the same class serves as that model's `base` sub-module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor, ModelTiling, StateDict

from .base import LoadHints, NativeArchitecture

SHARP_TAPS = (-1 / 32, 0.0, 9 / 32, 16 / 32, 9 / 32, 0.0, -1 / 32)
BLUR_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


class SeparableConv(torch.nn.Module):
    """A fixed depthwise separable filter: `h` (1 x k) then `v` (k x 1), zero padding."""

    def __init__(self, channels: int, taps: tuple[float, ...]):
        super().__init__()
        k = len(taps)
        kernel = torch.tensor(taps, dtype=torch.float32)
        self.register_buffer("kernel", kernel)
        self.h = torch.nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels, bias=False)
        self.v = torch.nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels, bias=False)
        with torch.no_grad():
            self.h.weight.copy_(kernel.view(1, 1, 1, k).expand(channels, 1, 1, k))
            self.v.weight.copy_(kernel.view(1, 1, k, 1).expand(channels, 1, k, 1))
        self.h.weight.requires_grad_(False)
        self.v.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.h(x))


class MagicKernelSharp2021Upsample(torch.nn.Module):
    """(B, C, H, W) -> (B, C, H*s, W*s); no clamp (callers clamp when they need to)."""

    def __init__(self, in_chans: int = 3, scale: int = 2, alpha: float = 0.0):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"MagicKernelSharp2021 needs a positive integer scale, got {scale}")
        self.scale = int(scale)
        self.alpha = float(alpha)
        self.sharp = SeparableConv(in_chans, SHARP_TAPS)
        self.blur = SeparableConv(in_chans, BLUR_TAPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha > 0:
            x = x + self.alpha * (self.sharp(x) - x)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.blur(x)

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that can change an output pixel (sharp 3 + blur ceil(2/s))."""
        return (3 if self.alpha > 0 else 0) + -(-2 // self.scale)


BUILTIN_PREFIX = "magic-kernel-sharp-"


class MagicKernelSharpArch(NativeArchitecture[MagicKernelSharp2021Upsample]):
    """Detects a stand-alone MagicKernelSharp2021 state dict (only the fixed kernels)."""

    def __init__(self) -> None:
        super().__init__(id="MagicKernelSharp2021", name="MagicKernelSharp2021", detect=self._detect)

    @staticmethod
    def _detect(state_dict: StateDict) -> bool:
        expected = {"sharp.kernel", "sharp.h.weight", "sharp.v.weight", "blur.kernel", "blur.h.weight", "blur.v.weight"}
        keys = set(state_dict.keys()) - {"scale", "alpha"}
        return keys == expected

    def load(
        self, state_dict: StateDict, hints: LoadHints | None = None
    ) -> ImageModelDescriptor[MagicKernelSharp2021Upsample]:
        hints = hints or LoadHints()
        scale = hints.scale_or_none()
        if "scale" in state_dict:
            scale = int(state_dict["scale"].item())
        alpha = float(state_dict["alpha"].item()) if "alpha" in state_dict else (hints.upsampler_alpha or 0.0)
        if scale is None:
            scale = 2
        channels = state_dict["blur.h.weight"].shape[0]
        model = MagicKernelSharp2021Upsample(channels, scale, alpha)
        weights = {k: v for k, v in state_dict.items() if k not in ("scale", "alpha")}
        return describe(model, weights, self)


def describe(
    model: MagicKernelSharp2021Upsample, state_dict: StateDict, arch: MagicKernelSharpArch
) -> ImageModelDescriptor:
    channels = model.blur.h.weight.shape[0]
    return ImageModelDescriptor(
        model,
        state_dict,
        architecture=arch,
        purpose="SR",
        tags=[f"alpha{model.alpha:g}"],
        supports_half=True,
        supports_bfloat16=True,
        scale=model.scale,
        input_channels=channels,
        output_channels=channels,
        tiling=ModelTiling.SUPPORTED,
    )


def builtin(scale: int, alpha: float = 0.0, channels: int = 3) -> ImageModelDescriptor[MagicKernelSharp2021Upsample]:
    """The weight-free model behind `builtin:magic-kernel-sharp-<s>x`."""
    model = MagicKernelSharp2021Upsample(channels, scale, alpha)
    return describe(model, model.state_dict(), MagicKernelSharpArch())
