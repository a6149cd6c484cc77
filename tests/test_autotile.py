"""Automatic tile size from a per-model memory probe and the device's free memory."""

from __future__ import annotations

import pytest
import torch
from conftest import photo
from model_zoo import ZOO
from test_runner import ConvNet, describe
from tilewise.engine import TileSettings, describe_state_dict, run_tiled
from tilewise.engine.compute import devices
from tilewise.engine.plan import autotile
from tilewise.engine.plan.planner import plan_run
from tilewise.engine.plan.tiling import plan_tiles

CPU = torch.device("cpu")


def test_bytes_per_pixel_grows_with_model_width():
    narrow = describe_state_dict(ZOO["Compact"].state_dict(seed=0))
    from spandrel.architectures.Compact import Compact

    wide = describe_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=4, upscale=4).state_dict())
    assert 0 < autotile.bytes_per_pixel(narrow, CPU, torch.float32) < autotile.bytes_per_pixel(wide, CPU, torch.float32)


def test_tile_follows_free_memory(monkeypatch):
    model = describe(ConvNet())
    per_pixel = autotile.bytes_per_pixel(model, CPU, torch.float32)
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(per_pixel * 300 * 300 / autotile.SAFETY))
    assert autotile.auto_tile_size(model, CPU, torch.float32) == 296  # 300 rounded down to a multiple of 8
    assert autotile.auto_tile_size(model, CPU, torch.float32, batch=4) == 144  # 150 rounded down
    monkeypatch.setattr(autotile, "free_memory", lambda device: 10)
    assert autotile.auto_tile_size(model, CPU, torch.float32) == autotile.MIN_AUTO_TILE
    monkeypatch.setattr(autotile, "free_memory", lambda device: 1 << 50)
    assert autotile.auto_tile_size(model, CPU, torch.float32, cap=False) > autotile.MAX_AUTO_TILE


def test_cpu_auto_runs_whole_when_it_fits_and_margins_would_cost_more(monkeypatch):
    """An RRDB-like model (25 kB per pixel of working memory, a 79-px margin) on 320²: the whole
    image fits, so auto runs it whole; a working-set cap once chose 42-px cores in 200-px
    windows (about 20x the pixels). Free memory still rules when it is short."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "bytes_per_pixel", lambda descriptor, device, dtype: 25152.0)
    monkeypatch.setattr(autotile, "free_memory", lambda device: 16 << 30)
    plan = plan_run(model, 320, 320, TileSettings(tile=0, pad=79), CPU)
    assert len(plan.tiles) == 1 and plan.batch == 1
    monkeypatch.setattr(autotile, "free_memory", lambda device: 1 << 50)
    assert autotile.auto_tile_size(model, CPU, torch.float32, cap=False) > autotile.MAX_AUTO_TILE
    assert plan_run(_global(describe(ConvNet())), 1500, 1200, TileSettings(tile=0), CPU).tile == -1
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(25152 * 300 * 300 / autotile.SAFETY))
    assert autotile.auto_tile_size(model, CPU, torch.float32) == 296  # free memory rules when smaller
    plan = plan_run(model, 1000, 900, TileSettings(tile=0, pad=79), CPU)
    assert len(plan.tiles) > 1 and max(t.window.height * t.window.width for t in plan.tiles) <= 300 * 300


def test_auto_tiling_is_seamless_when_memory_is_short(monkeypatch):
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 1)  # forces the smallest auto tile
    image = photo("coffee", 0, 0, 300, 280)
    plan = plan_run(model, 300, 280, TileSettings(tile=0), CPU)
    assert len(plan.tiles) > 1 and plan.tile == autotile.MIN_AUTO_TILE
    whole = run_tiled(model, image, settings=TileSettings(tile=-1))
    assert (run_tiled(model, image, settings=TileSettings(tile=0)) - whole).abs().max().item() <= 1e-5


def test_auto_windows_take_the_shape_with_the_least_margin(monkeypatch):
    """Auto windows hold the same pixel budget as the square tile but compute fewer pixels
    (here full-height strips), still exactly the untiled result; a video's per-frame runs
    (`settings_tile`) plan the same windows again."""
    model = describe(ConvNet())
    per_pixel = autotile.bytes_per_pixel(model, CPU, torch.float32)
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(per_pixel * 200 * 200 / autotile.SAFETY))
    image = photo("coffee", 0, 0, 180, 400)
    plan = plan_run(model, 180, 400, TileSettings(tile=0), CPU)
    square = plan_tiles(180, 400, plan.tile, plan.pad)

    def computed(tiles):
        return sum(t.window.height * t.window.width for t in tiles)

    assert plan.tile == 200 and computed(plan.tiles) < computed(square)
    assert all(t.window.height == 180 for t in plan.tiles)
    assert max(t.window.height * t.window.width for t in plan.tiles) <= 200 * 200
    again = plan_run(model, 180, 400, TileSettings(tile=plan.settings_tile, pad=plan.pad), CPU)
    assert again.tiles == plan.tiles
    whole = run_tiled(model, image, settings=TileSettings(tile=-1))
    assert (run_tiled(model, image, settings=TileSettings(tile=0)) - whole).abs().max().item() <= 1e-5


def _global(model):
    model.model.global_context = True
    return model


def test_global_context_runs_whole_images_when_they_fit(monkeypatch):
    """Area, not side, decides: a long thin image that fits memory is not tiled, and one image
    goes per forward; a bounded model with the same budget tiles by side as before."""
    bounded, unbounded = describe(ConvNet()), _global(describe(ConvNet()))
    per_pixel = autotile.bytes_per_pixel(unbounded, CPU, torch.float32)
    autotile.bytes_per_pixel(bounded, CPU, torch.float32)
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(per_pixel * 300 * 300 / autotile.SAFETY))
    plan = plan_run(unbounded, 150, 590, TileSettings(tile=0), CPU)  # 88,500 px <= 300 x 300
    assert plan.tile == -1 and len(plan.tiles) == 1 and plan.batch == 1
    plan = plan_run(bounded, 150, 590, TileSettings(tile=0), CPU)  # by side: tiled, one window per forward on a CPU
    assert (plan.tile, plan.batch) == (296, 1) and len(plan.tiles) > 1
    assert (
        plan_run(bounded, 150, 590, TileSettings(tile=100, batch=3), CPU).batch == 3
    )  # an explicit tile keeps its batch


def test_global_context_tiles_only_to_fit_with_the_largest_window(monkeypatch, caplog):
    import logging

    unbounded = _global(describe(ConvNet(), name="GlobalNet"))
    per_pixel = autotile.bytes_per_pixel(unbounded, CPU, torch.float32)
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(per_pixel * 200 * 200 / autotile.SAFETY))
    monkeypatch.setattr(autotile, "MAX_AUTO_TILE", 160)  # the cap applies to bounded models only
    with caplog.at_level(logging.WARNING, logger="tilewise"):
        plan = plan_run(unbounded, 300, 280, TileSettings(tile=0), CPU)
    assert plan.tile == 200 and plan.batch == 1 and len(plan.tiles) > 1
    assert any("uses global context" in r.message for r in caplog.records)


def test_global_context_small_images_run_whole_without_the_memory_probe(monkeypatch):
    """A global-context model (SwinIR) on an image within the 64 kB/px bound runs whole without
    the memory probe (its first 256² call was 1.55x a later one, mostly that probe); beyond the
    bound the probe still decides, and tiles when memory is short."""
    model = _global(describe(ConvNet()))
    monkeypatch.setattr(autotile, "free_memory", lambda device: 16 << 30)
    monkeypatch.setattr(autotile, "_probe", lambda *args: pytest.fail("the full memory probe ran"))
    plan = plan_run(model, 200, 180, TileSettings(tile=0), CPU)
    assert plan.tile == -1 and len(plan.tiles) == 1
    with pytest.raises(pytest.fail.Exception):
        plan_run(model, 400, 360, TileSettings(tile=0), CPU)  # 400 x 360 x 64 kB is over the working set
    monkeypatch.undo()
    monkeypatch.setattr(autotile, "free_memory", lambda device: int(48 * 4 * 100 * 100 / autotile.SAFETY))
    assert len(plan_run(_global(describe(ConvNet())), 400, 360, TileSettings(tile=0), CPU).tiles) > 1


def test_paragonsr2_photo_declares_global_context():
    from conftest import PARAGONSR2_FIXTURES as fixtures
    from tilewise.engine import load_model
    from tilewise.engine.plan.receptive import has_global_context

    assert has_global_context(load_model(fixtures / "paragonsr2_photo_x2.safetensors", cache=None))
    assert has_global_context(load_model(fixtures / "paragonsr2_pro_x2.safetensors", cache=None))
    assert not has_global_context(load_model(fixtures / "paragonsr2_realtime_x2.safetensors", cache=None))
    assert not has_global_context(describe(ConvNet()))


def test_probe_is_cached():
    model = describe(ConvNet())
    autotile.bytes_per_pixel(model, CPU, torch.float32)
    calls = len(model.model.calls)
    autotile.bytes_per_pixel(model, CPU, torch.float32)
    assert len(model.model.calls) == calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: probes the CUDA allocator's peak")
@pytest.mark.cuda
def test_cuda_probe_uses_allocator_peak():
    model = describe(ConvNet())
    assert autotile.bytes_per_pixel(model, torch.device("cuda"), torch.float16) > 0


def _cuda_peak(forward, device=torch.device("cuda")) -> int:
    meter = devices.DevicePolicy().peak_memory(device)
    with meter:
        forward(None)
    return meter.bytes


class FakeCuda:
    """The torch.cuda memory queries the CUDA probe (`devices.PeakMeter`) makes, over a simulated device: a forward
    allocates `torch_bytes` through PyTorch (reserved from the device) and `external_bytes`
    directly from the device, as onnxruntime's arena does."""

    def __init__(self, free: int):
        self.free, self.allocated, self.peak, self.reserved = free, 0, 0, 0

    def forward(self, torch_bytes: int, external_bytes: int):
        def run(_x):
            self.peak = max(self.peak, self.allocated + torch_bytes)
            self.reserved += torch_bytes
            self.free -= torch_bytes + external_bytes

        return run

    def install(self, monkeypatch):
        for name, fn in {
            "synchronize": lambda device=None: None,
            "reset_peak_memory_stats": lambda device=None: setattr(self, "peak", self.allocated),
            "memory_allocated": lambda device=None: self.allocated,
            "max_memory_allocated": lambda device=None: self.peak,
            "memory_reserved": lambda device=None: self.reserved,
            "mem_get_info": lambda device=None: (self.free, 8 << 30),
            "is_available": lambda: True,
        }.items():
            monkeypatch.setattr(torch.cuda, name, fn)


@pytest.mark.parametrize("torch_bytes, external_bytes", [(64 << 20, 0), (4 << 20, 96 << 20), (0, 32 << 20)])
def test_cuda_probe_counts_memory_outside_the_torch_allocator(monkeypatch, torch_bytes, external_bytes):
    """The logic of the CUDA probe, on a simulated device: an onnxruntime model's arena is
    device memory torch's statistics never see, and must count."""
    fake = FakeCuda(free=6 << 30)
    fake.install(monkeypatch)
    peak = _cuda_peak(fake.forward(torch_bytes, external_bytes))
    assert peak == torch_bytes + external_bytes


def test_cuda_probe_does_not_count_memory_torch_already_reserved(monkeypatch):
    """Memory torch's caching allocator reserved during the probe is counted once, as its peak."""
    fake = FakeCuda(free=6 << 30)
    fake.install(monkeypatch)
    fake.reserved = 256 << 20  # cached from earlier work: reused, the device loses nothing

    def forward(_x):
        fake.peak = 128 << 20

    assert _cuda_peak(forward) == 128 << 20


class CatsInside(torch.nn.Module):
    """The largest tensor of its forward is a concatenation, which no module returns."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.tail = torch.nn.Conv2d(40, 3 * 4, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.tail(torch.cat([self.head(x)] * 10, dim=1)))


def test_largest_tensor_counts_every_operation_not_only_module_outputs():
    assert autotile.largest_tensor_per_pixel(describe(ConvNet()), CPU, torch.float32) == 12 * 4  # the pre-shuffle map
    assert autotile.largest_tensor_per_pixel(describe(CatsInside()), CPU, torch.float32) == 40 * 4
    assert autotile.largest_tensor_per_pixel(describe(CatsInside()), CPU, torch.bfloat16) == 40 * 2
    # the memory probe's forward measures it on the way (one forward for both, both kept on disk)
    assert autotile._probe(describe(CatsInside()), CPU, torch.float32)["largest"] == 40 * 4


class ViewsAndTemporaries(torch.nn.Module):
    """16 channels live as one storage with a view on it, a 32-channel temporary, an 8-channel
    product of it, then the temporary freed before the 8-channel result: a peak of 16 + 32 + 8
    channels (the view never counts again, the freed temporary never beside the result)."""

    def forward(self, x):
        wide = x.repeat(1, 16, 1, 1)  # 16 channels
        view = wide[:, :8]  # the same storage
        temporary = torch.cat([wide, wide], dim=1)  # 32 channels
        small = temporary[:, :8] * 2  # 8 channels; `temporary` is freed next
        del temporary
        return view + small


def test_the_memory_probe_counts_each_storage_once_while_it_lives():
    meter = autotile._TensorMeter()
    x = torch.rand(1, 1, 20, 20)
    with torch.no_grad(), meter:
        ViewsAndTemporaries()(x)
    channel = 20 * 20 * 4  # bytes of one fp32 channel
    assert meter.peak == (16 + 32 + 8) * channel, "the product lives beside both before the temporary goes"
    assert meter.largest == 32 * channel


def test_the_memory_probe_counts_tensors_whose_storage_it_cannot_see(monkeypatch):
    """A backend whose tensors expose no storage (some private devices) is still counted,
    each tensor as its own block: never less than the real peak."""

    def hidden(self):
        raise NotImplementedError("no storage on this backend")

    monkeypatch.setattr(torch.Tensor, "untyped_storage", hidden)
    meter = autotile._TensorMeter()
    with torch.no_grad(), meter:
        ViewsAndTemporaries()(torch.rand(1, 1, 20, 20))
    assert meter.peak >= (16 + 32 + 8) * 20 * 20 * 4


def _allocator_peak(forward, x) -> int:
    """Peak bytes PyTorch's CPU allocator held during one forward, from the profiler's
    allocation events: an independent reference for the probe's count."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward(x)
    live = peak = 0
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("name", ["Compact", "SPAN", "ESRGAN", "SwinIR"])
def test_the_memory_estimate_bounds_what_a_larger_forward_allocates(name):
    """The estimate from a 64² forward, times the overhead allowance, covers what the allocator
    holds at the peak of a 128² forward (room left for oneDNN's own scratch memory)."""
    from tilewise.engine.compute.precision import forward_fn, model_on

    descriptor = describe_state_dict(ZOO[name].state_dict(seed=0))
    estimate = autotile._probe(descriptor, CPU, torch.float32)["bytes"]
    size = 128
    forward = forward_fn(descriptor, model_on(descriptor, CPU, torch.float32))
    peak = _allocator_peak(forward, torch.rand(1, descriptor.input_channels, size, size)) / size**2
    assert peak > 0
    assert estimate >= autotile.CPU_OVERHEAD * peak * 0.95, (estimate, peak)
    assert estimate <= autotile.CPU_OVERHEAD * peak * 8, "a gross over-estimate would tile images that fit"


@pytest.mark.parametrize("pad, tiled", [(3, True), (40, False)])
def test_cpu_auto_weighs_large_tensors_against_margins(monkeypatch, pad, tiled):
    """Windows whose largest tensor stays small run faster per pixel on a CPU; auto takes them
    when their margins cost less than the large tensors' slowdown, else the larger window."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 64 << 30)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 48 * 136 * 136)  # 136² windows of ConvNet
    plan = plan_run(model, 300, 320, TileSettings(tile=0, pad=pad), CPU)
    biggest = max(t.window.height * t.window.width for t in plan.tiles)
    if tiled:
        assert len(plan.tiles) > 1 and biggest <= 136 * 136
        computed = sum(t.window.height * t.window.width for t in plan.tiles)
        assert computed < 300 * 320 * 1.45
    else:
        assert len(plan.tiles) == 1, "margins of 40 px would cost more than the slowdown"


def test_largest_tensor_of_a_model_failing_in_its_dtype_is_sized_from_fp32():
    forwards = []

    class FailsInBf16(ConvNet):
        def forward(self, x):
            forwards.append(x.dtype)  # shared by the private bf16 copy
            if x.dtype == torch.bfloat16:
                raise RuntimeError("expected scalar type Float but found BFloat16")
            return super().forward(x)

    model = describe(FailsInBf16())
    assert autotile.largest_tensor_per_pixel(model, CPU, torch.bfloat16) == 12 * 2
    assert autotile.large_tensor_rate(model, CPU, torch.bfloat16, 10**6) == 1.0  # no preference
    with pytest.raises(autotile.ProbeFailed, match="found BFloat16"):
        autotile.bytes_per_pixel(model, CPU, torch.bfloat16)
    assert autotile.pixel_budget(model, CPU, torch.bfloat16) == autotile.pixel_budget(model, CPU, torch.float32)
    assert forwards == [torch.bfloat16, torch.float32], "the failing forward ran once, not on every ask"


def test_an_allocator_record_gives_no_large_tensor_preference(monkeypatch):
    """A GPU's probe record is the allocator's peak without a tensor profile: the CPU page-fault
    terms give no preference there, and no further forward runs to count tensors."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "_record", lambda descriptor, device, dtype: {"bytes": 5000.0})
    monkeypatch.setattr(autotile, "_probe_input", lambda *args: (None, None, None, autotile.PROBE))
    monkeypatch.setattr(autotile, "_counted", lambda *args: pytest.fail("a counting forward ran"))
    cuda = torch.device("cuda")
    assert autotile.large_tensor_rate(model, cuda, torch.float16, 10**7) == 1.0
    assert autotile.largest_tensor_per_pixel(model, cuda, torch.float16) == 0.0


def test_a_chosen_tile_whose_margins_dominate_is_warned_once(monkeypatch, caplog):
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 16 << 30)
    monkeypatch.setattr("tilewise.engine.plan.planner._warned_costly", set())
    with caplog.at_level("WARNING", logger="tilewise"):
        plan = plan_run(model, 320, 320, TileSettings(tile=64, pad=79), CPU)
        plan_run(model, 320, 320, TileSettings(tile=64, pad=79), CPU)
    computed = sum(t.window.height * t.window.width for t in plan.tiles) / (320 * 320)
    lines = [r.getMessage() for r in caplog.records if "image's pixels" in r.getMessage()]
    assert computed > 2 and len(lines) == 1
    assert f"compute {computed:.1f}x the image's pixels; automatic tiling computes 1.00x" in lines[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tilewise"):
        plan_run(model, 320, 320, TileSettings(tile=256, pad=8), CPU)
    assert not [r for r in caplog.records if "image's pixels" in r.getMessage()]


@pytest.mark.parametrize("pad, tiled", [(8, True), (79, False)])
def test_cpu_auto_weighs_the_working_set_against_margins(monkeypatch, pad, tiled):
    """RRDB-like working memory (25 kB per pixel) on 640²: with narrow margins, windows under
    the working-set size (measured faster per pixel) win; with RRDB's real 79-px margins the
    whole image does (those windows would cost more in margins than they save)."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "bytes_per_pixel", lambda descriptor, device, dtype: 25152.0)
    monkeypatch.setattr(autotile, "free_memory", lambda device: 64 << 30)
    plan = plan_run(model, 640, 640, TileSettings(tile=0, pad=pad), CPU)
    if tiled:
        assert (
            len(plan.tiles) > 1
            and max(t.window.height * t.window.width for t in plan.tiles) * 25152 <= autotile.CPU_WORKING_SET
        )
    else:
        assert len(plan.tiles) == 1


def test_cpu_auto_runs_an_rrdb_whole_where_strips_were_measured_slower(monkeypatch):
    """RRDB 6 blocks, fp32, 512², its probed 10-px margin: two strips ran 1.02-1.04x the whole
    image's time (benchmarks/README.md, "CPU cost terms"), so auto runs it whole; on 640² four
    strips ran 0.98x, and auto tiles."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "bytes_per_pixel", lambda descriptor, device, dtype: 24576.0)
    monkeypatch.setattr(autotile, "largest_tensor_per_pixel", lambda descriptor, device, dtype: 768.0)
    monkeypatch.setattr(autotile, "free_memory", lambda device: 64 << 30)
    assert len(plan_run(model, 512, 512, TileSettings(tile=0, pad=10), CPU).tiles) == 1
    assert len(plan_run(model, 640, 640, TileSettings(tile=0, pad=10), CPU).tiles) > 1


def test_cpu_auto_probes_no_margin_when_every_candidate_runs_whole(monkeypatch):
    """RRDB at 256²: its large tensors and working set give smaller candidate windows, but all of
    them hold the whole image, so the plan needs no margin and the margin probe (forwards of
    its own) must not run; a larger image that does tile asks for it."""
    model = describe(ConvNet())
    asked = []
    monkeypatch.setattr("tilewise.engine.plan.planner.context_pad", lambda *args: asked.append(args) or 8)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 48 * 100 * 100)  # below the smallest auto window
    monkeypatch.setattr(autotile, "bytes_per_pixel", lambda descriptor, device, dtype: 25152.0)
    monkeypatch.setattr(autotile, "free_memory", lambda device: 64 << 30)
    plan = plan_run(model, 256, 256, TileSettings(tile=0), CPU)
    assert len(plan.tiles) == 1 and not asked
    plan_run(model, 640, 640, TileSettings(tile=0), CPU)
    assert asked


def test_one_probe_forward_gives_the_memory_figure_and_the_tensor_profile(monkeypatch):
    """On a CPU, auto tiling reads the working memory and the tensor profile (the large-tensor
    cost) from the same 64² forward: planning a small image and a large one runs one probe
    forward in all, and the small image runs whole."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 16 << 30)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 48 * 136 * 136)  # 136² windows of ConvNet
    small = plan_run(model, 120, 110, TileSettings(tile=0, pad=4), CPU)
    assert len(small.tiles) == 1 and small.tile == -1
    large = plan_run(model, 300, 320, TileSettings(tile=0, pad=4), CPU)
    assert len(large.tiles) > 1, "the large-tensor cost was read"
    assert model.model.calls == [(1, 3, 64, 64)], "one probe forward for both figures and both images"


def test_the_large_tensor_term_is_glibcs_only(monkeypatch):
    """The term models glibc's reuse of blocks under its mmap threshold; where every large block
    is mapped afresh (Windows' heap) or nothing was measured (macOS), strips cannot avoid the
    faults and only add margins: no such term, and an image that fits runs whole."""
    monkeypatch.setattr(autotile.platform, "libc_ver", lambda *args, **kwargs: ("glibc", "2.41"))
    assert autotile._large_tensor_limit() == 31 << 20
    monkeypatch.setattr(autotile.platform, "libc_ver", lambda *args, **kwargs: ("", ""))
    assert autotile._large_tensor_limit() is None
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 16 << 30)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 48 * 136 * 136)  # 136² windows of ConvNet
    assert len(plan_run(model, 300, 320, TileSettings(tile=0, pad=4), CPU).tiles) > 1
    monkeypatch.setattr(autotile, "LARGE_TENSOR", None)
    assert autotile.large_tensor_rate(model, CPU, torch.float32, 10**8) == 1.0
    assert len(plan_run(model, 300, 320, TileSettings(tile=0, pad=4), CPU).tiles) == 1


def test_the_large_tensor_slowdown_is_weighted_by_the_share_of_large_tensors(monkeypatch):
    """A forward whose only large tensor is one concatenation pays a small part of the slowdown
    (SPAN bf16 on 512² was cut into strips computing 1.42x the pixels, slower than whole); one
    whose tensors are all large pays all of it; one with none pays nothing."""
    model = describe(CatsInside())  # per pixel, fp32: head 16 B, the concatenation 160 B, tail 48 B, shuffle 48 B
    pixels = 10_000
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 100 * pixels)  # only the concatenation is over it
    partial = autotile.large_tensor_rate(model, CPU, torch.float32, pixels)
    assert 1.0 < partial < 1.0 + (autotile.LARGE_TENSOR_PENALTY - 1.0) * 0.8
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 1)
    assert autotile.large_tensor_rate(model, CPU, torch.float32, pixels) == pytest.approx(autotile.LARGE_TENSOR_PENALTY)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 1 << 40)
    assert autotile.large_tensor_rate(model, CPU, torch.float32, pixels) == 1.0


def test_the_margin_probe_looks_only_as_far_as_a_tiled_plan_could_win(monkeypatch):
    """When the whole image fits, the margin matters only below the `reach` at which tiles stop
    beating it: the runner asks for the margin with that reach (the probe may stop there), and
    the reach is exact: one pixel less tiles, the reach itself runs whole."""
    model = describe(ConvNet())
    monkeypatch.setattr(autotile, "free_memory", lambda device: 64 << 30)
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 48 * 136 * 136)
    reaches = []

    def margin(descriptor, settings, device, align, reach=None):
        if settings.pad is not None:
            return settings.pad
        reaches.append(reach)
        return answer

    monkeypatch.setattr("tilewise.engine.plan.planner.context_pad", margin)
    answer = 10_000
    assert len(plan_run(model, 250, 240, TileSettings(tile=0), CPU).tiles) == 1
    reach = reaches[-1]
    assert reach is not None and 3 < reach < 40
    answer = reach
    assert len(plan_run(model, 250, 240, TileSettings(tile=0), CPU).tiles) == 1
    answer = reach - 1
    assert len(plan_run(model, 250, 240, TileSettings(tile=0), CPU).tiles) > 1
    assert len(plan_run(model, 250, 240, TileSettings(tile=0, pad=reach - 1), CPU).tiles) > 1
    assert len(plan_run(model, 250, 240, TileSettings(tile=0, pad=reach), CPU).tiles) == 1
