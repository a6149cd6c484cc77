"""How much context a tile needs: the model's receptive radius, exact or effective.

Two probes, both run once per model (fp32) and cached:

* exact radius: the extent of the input gradient of the centre output pixels on a random image
  (41 px, then 81 px when the field reaches the smaller probe's border). One forward with the
  probe's border set to NaN first tells whether the field reaches that border (`reaches_border`),
  so the backward pass, many forwards' cost on deep nets, runs only where it finds the radius.
  For convolutional nets that is their structural receptive field. Shallow models (Compact,
  SPAN: a dozen pixels) get it as `pad`, so crop-merged tiles equal the untiled run to rounding.
* effective radius: deep models (RRDB: hundreds of pixels) have a structural field far larger
  than what matters numerically. For them we crop a random probe image around its centre with a
  growing margin r and take the smallest r at which the centre outputs move by at most
  `PROBE_TOLERANCE`: exactly the error a tile with margin r makes. Each margin is compared with
  the next larger one, so the probe costs crops a little larger than the radius it finds, not a
  forward of the whole probe (`effective_radius`). The result gets `SAFETY` on top, since the
  probe is one image and one position.

The probes run only when a plan has tiles (an image that runs whole needs no margin), and
their result is kept on disk per weights digest (`probe_store`). A caller that only needs to
know whether the margin is below some `reach` (auto tiling on a CPU: beyond it, whole beats
every tiled plan) gets a probe that stops there: the same answer as the full probe when the
margin is smaller, else a `partial` context saying "at least `reach`": a full probe can cost
more than running the image whole (figures: benchmarks/README.md, "Receptive-radius probes").

A model may also declare its radius (`model.receptive_radius`, exact), an effective reach
(`model.receptive_hint`), or a minimum margin (`model.min_tile_margin`, e.g. one attention
window); declared values skip the probes. A module that computes no input gradients (an
onnxruntime session) says `differentiable = False` and gets the effective probe only.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from spandrel import ImageModelDescriptor

from . import probe_store

Forward = Callable[[torch.Tensor], torch.Tensor]

#: Largest radius (input pixels) the exact probe looks for; beyond it a model counts as deep.
EXACT_PROBE_RADIUS = 40
#: Largest margin the effective probe tries; a model still moving outputs there has global context.
EFFECTIVE_PROBE_RADIUS = 128
#: Output change the effective radius allows (ten times below the 1e-4 tiling target).
PROBE_TOLERANCE = 1e-5
#: Extra margin on top of the effective radius.
SAFETY = 1.25


@dataclass(frozen=True)
class Context:
    """The margin a tile needs. `exact`: it is the structural radius; `bounded`: the probe converged;
    `partial`: the probe stopped early, and the margin is at least `pad`."""

    pad: int
    exact: bool
    bounded: bool = True
    partial: bool = False


_cache: "weakref.WeakKeyDictionary[torch.nn.Module, Context]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def has_global_context(descriptor: ImageModelDescriptor) -> bool:
    """Whether no tile margin makes tiles equal the whole-image run: the model says so
    (`global_context`, e.g. ParagonSR2 photo/pro, whose shifted windows wrap around the image)
    or spandrel discourages tiling it (SwinIR, SCUNet, ...). Decided from declarations only, never
    from a probe result, so that a model's first and later runs are planned alike."""
    from spandrel import ModelTiling

    declared = getattr(descriptor.model, "global_context", None)
    if isinstance(declared, bool):
        return declared
    return descriptor.tiling == ModelTiling.DISCOURAGED


def model_context(
    descriptor: ImageModelDescriptor, forward: Forward, device: torch.device, align: int = 1, reach: int | None = None
) -> Context:
    """The tile margin for `descriptor`; `forward` runs the model in fp32 on `device` without clamping.

    With `reach`, the caller only needs the margin when it is below `reach`: the probe stops once
    it knows the margin is at least that (a `partial` context, kept until a caller needs more)."""
    model = descriptor.model
    with _lock:
        known = _cache.get(model)
    if known is not None and (not known.partial or (reach is not None and known.pad >= reach)):
        return known
    declared = getattr(model, "receptive_radius", None)
    hint = getattr(model, "receptive_hint", None)
    if isinstance(declared, int):
        context = Context(declared, exact=True)
    elif isinstance(hint, int):  # the architecture knows its effective reach (e.g. shifted-window attention)
        context = Context(hint, exact=False)
    else:
        stored = _stored_key(descriptor, align)
        kept = probe_store.get(stored) if stored else None
        context = None
        whole = probe_store.record(kept, numbers=("pad", "exact", "bounded", "partial"))
        if whole is not None and whole["pad"] >= 0:
            context = Context(int(whole["pad"]), bool(whole["exact"]), bool(whole["bounded"]), bool(whole["partial"]))
        if context is None or context.partial and (reach is None or context.pad < reach):
            context = _probe(descriptor, forward, device, align, reach)
            if stored:
                probe_store.put(
                    stored,
                    {
                        "pad": context.pad,
                        "exact": int(context.exact),
                        "bounded": int(context.bounded),
                        "partial": int(context.partial),
                    },
                    replace=kept is not None,  # unusable, or partial and now probed further
                )
        minimum = getattr(model, "min_tile_margin", None)
        if isinstance(minimum, int) and minimum > context.pad:
            context = Context(minimum, exact=False, bounded=context.bounded, partial=context.partial)
    with _lock:
        _cache[model] = context
    return context


def _stored_key(descriptor: ImageModelDescriptor, align: int) -> str | None:
    """The key the probed margin is kept under between processes (`probe_store`): the weights,
    the architecture, the alignment and the probe's settings; None when keeping is off."""
    probe = f"{EXACT_PROBE_RADIUS}|{EFFECTIVE_PROBE_RADIUS}|{PROBE_TOLERANCE}|{SAFETY}"
    settings = f"receptive4|{descriptor.architecture.id}|{align}|{probe}|{torch.__version__}"
    return probe_store.key(descriptor.model, settings)


def has_inference_weights(module: torch.nn.Module) -> bool:
    """Whether any weight of `module` was created inside `torch.inference_mode()`."""
    return any(t.is_inference() for t in module.parameters()) or any(t.is_inference() for t in module.buffers())


class _GradientCapableForward:
    """The model's forward on a normal-tensor fp32 copy of the original module (made at the
    first call), for the gradient probe: hosts that load models under `torch.inference_mode()`
    (ComfyUI runs every node inside it) give weights autograd refuses ("Inference tensors cannot
    be saved for backward"), and so does a private copy made while a host runs us inside it; a
    copy made outside inference mode is made of normal tensors."""

    def __init__(self, descriptor: ImageModelDescriptor, device: torch.device):
        self.descriptor, self.device, self.forward = descriptor, device, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward is None:
            from ..compute.precision import forward_fn, private_copy

            with torch.inference_mode(False):
                module = private_copy(self.descriptor.model, self.device, torch.float32).eval()
            self.forward = forward_fn(self.descriptor, module)
        return self.forward(x)


def _probe(
    descriptor: ImageModelDescriptor, forward: Forward, device: torch.device, align: int, reach: int | None = None
) -> Context:
    """The full probe's context, or, with `reach`, a `partial` one as soon as the margin is known
    to be at least `reach`.

    The full probe runs the exact probes, then, for deep models, the effective one. With `reach`,
    the effective probe runs first and stops at `reach`: outputs that still move when a crop's
    margin grows past m mean the structural radius is over m as well, so both kinds of margin
    are then over `reach`, and the costlier gradient probes are skipped. When it
    settles first, the exact probes follow, and the answer is the full probe's. Each stage draws
    its own seeded image, so the order does not change what any stage sees."""
    channels = descriptor.input_channels
    requirements = descriptor.size_requirements
    align = max(align, requirements.multiple_of)

    def image(extent: int, seed: int) -> torch.Tensor:
        size = _round_up(max(2 * extent + 1, requirements.minimum), align)
        return torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(seed)).to(device)

    def effective(stop):
        return effective_radius(
            forward, image(EFFECTIVE_PROBE_RADIUS, 1236), descriptor.scale, align, requirements.minimum, stop
        )

    found = None
    if reach is not None:
        found = effective(reach)
        radius, bounded = found
        if not bounded and radius < EFFECTIVE_PROBE_RADIUS:  # stopped at margin `radius` >= reach, still moving
            return Context(radius + 1, exact=False, bounded=False, partial=True)
    # gradients go through a copy made outside inference mode: the host may have loaded the model
    # in it (ComfyUI), or the run's own copy (with inference forms) may have been made in it (a
    # host calling under torch.inference_mode()); autograd refuses inference tensors either way
    if getattr(descriptor.model, "differentiable", True):
        gradient = _GradientCapableForward(descriptor, device)
        # coarse to fine: a 41-px probe finds the radius of shallow models (Compact 18, SPAN 13)
        # at a quarter of the 81-px probe's cost, which only deeper models then need
        for extent, seed in ((EXACT_PROBE_RADIUS // 2, 1234), (EXACT_PROBE_RADIUS, 1235)):
            probe = image(extent, seed)
            if reaches_border(forward, probe):
                continue  # the gradient would only say so, at the cost of a backward through a deep net
            radius = exact_radius(gradient, probe)
            if radius is not None and radius < EXACT_PROBE_RADIUS:
                return Context(radius, exact=True)
    radius, bounded = found or effective(None)
    return Context(math.ceil(radius * SAFETY), exact=False, bounded=bounded)


def exact_radius(forward: Forward, image: torch.Tensor) -> int | None:
    """Largest distance (input pixels) from the centre that the centre outputs depend on.

    Returns None when the dependence reaches the probe's border (the field is larger). The
    output block of the centre pixel follows from the output's size (the model's scale).
    """
    size = image.shape[-1]
    centre = size // 2
    with torch.inference_mode(False), torch.enable_grad():
        probe = image.clone().requires_grad_(True)
        out = forward(probe)
        s = out.shape[-1] // size
        out[..., centre * s : (centre + 1) * s, centre * s : (centre + 1) * s].sum().backward()
    assert probe.grad is not None
    grad = probe.grad.abs().sum(dim=(0, 1))
    rows = torch.nonzero(grad.sum(dim=1)).flatten()
    cols = torch.nonzero(grad.sum(dim=0)).flatten()
    if rows.numel() == 0:
        return 0
    reach = max(centre - int(rows.min()), int(rows.max()) - centre, centre - int(cols.min()), int(cols.max()) - centre)
    return None if reach >= centre else reach


def reaches_border(forward: Forward, image: torch.Tensor) -> bool:
    """Whether the centre outputs depend on the probe's border, i.e. whether `exact_radius` on
    this image would return None, from one forward: the border pixels (distance >= the centre's
    from the centre) are set to NaN, which every arithmetic path carries to the outputs that
    depend on them however small the dependence (a perturbation of a pixel 40 layers away would
    vanish in rounding). The gradient gives the answer from a backward pass, which costs many
    forwards for deep convolutional nets (RRDB 6 blocks on 81 px: 5 s against a 0.4 s forward),
    so `_probe` asks this first and runs the gradient only where it can succeed.
    """
    size = image.shape[-1]
    centre = size // 2
    distance = (torch.arange(size) - centre).abs()
    border = (torch.maximum(distance[:, None], distance[None, :]) >= centre).to(image.device)
    with torch.inference_mode():
        out = forward(image.masked_fill(border, float("nan")))
    s = out.shape[-1] // size
    return bool(out[..., centre * s : (centre + 1) * s, centre * s : (centre + 1) * s].isnan().any())


def probe_margins(limit: int) -> list[int]:
    """The margins the effective probe compares, each about 1.5x the last, up to `limit`."""
    margins = [4]
    while margins[-1] < limit:
        margins.append(min(limit, math.ceil(margins[-1] * 1.5)))
    return margins


def effective_radius(
    forward: Forward, image: torch.Tensor, scale: int, align: int = 1, minimum: int = 0, stop: int | None = None
) -> tuple[int, bool]:
    """Smallest margin r at which cropping the input to centre +- r keeps the centre outputs
    within `PROBE_TOLERANCE` of what more context gives; (half the probe's size, False) when none
    up to it does. With `stop`, the search ends at the first margin of `probe_margins` at or past
    `stop`: (that margin, False) when the outputs have not settled there. Margins and references
    are the full search's, so a radius found below `stop` is the full search's radius.

    Cost grows with the radius found, not with the probe's size: each margin of `probe_margins`
    is compared with the next one (about 1.5x larger) instead of with the whole probe image, so
    a model whose outputs settle at 8 px runs crops of at most 29 px rather than a 257-px probe
    as costly as a 256² upscale. Cropping
    moves the centre outputs by an amount that falls steeply with the margin (exponentially for
    deep convolutional nets), so the difference to the next margin is most of the error; the
    comparison allows a quarter of the tolerance to cover the rest. Between the last failing and
    the first passing margin a bisection against the next margin's crop narrows r to 1/8.
    """
    size = image.shape[-1]
    centre = size // 2
    block = max(1, align)  # look at a block of outputs so every phase of an aligned grid is seen
    allowed = PROBE_TOLERANCE / 4
    crops: dict[int, torch.Tensor] = {}

    def centre_outputs(r: int) -> torch.Tensor:
        if r not in crops:
            y0 = max(0, (centre - r) // align * align)
            y1 = min(size, _round_up(max(centre + block + r, y0 + minimum), align))
            out = forward(image[..., y0:y1, y0:y1])
            s = out.shape[-1] // (y1 - y0)
            crops[r] = out[
                ..., (centre - y0) * s : (centre - y0 + block) * s, (centre - y0) * s : (centre - y0 + block) * s
            ].clone()
        return crops[r]

    def settled(r: int, reference: int) -> bool:
        return float((centre_outputs(r) - centre_outputs(reference)).abs().max()) <= allowed

    margins = probe_margins(centre - block)
    with torch.inference_mode():
        low = 0
        for r, reference in zip(margins, margins[1:]):
            if settled(r, reference):
                high = r
                break
            low = r
            if stop is not None and r >= stop:
                return r, False
        else:
            return centre, False
        while high - low > max(1, high // 8):
            mid = (low + high) // 2
            if settled(mid, reference):
                high = mid
            else:
                low = mid
        return high, True


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
