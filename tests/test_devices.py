"""The device policy: the host decides devices, free memory, precision and out-of-memory.

No GPU here, so the hosts' answers for MPS, XPU and DirectML are simulated: a fake of
ComfyUI's `comfy.model_management` (the functions Tilewise's adapter in `nodes/host.py`
calls) behind the real adapter, with CPU tensors standing in for the device's. The tests
show that the tile plan, the precision and the out-of-memory recovery follow those answers.
"""

from __future__ import annotations

import builtins
import importlib.util
import logging
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import photo
from test_runner import ConvNet, describe
from tilewise.engine import TileSettings, UpscaleOptions, plan_run, resolve_dtype, upscale
from tilewise.engine.compute import devices
from tilewise.engine.errors import ImageError, ModelRunError
from tilewise.engine.image.pipeline import check_memory
from tilewise.engine.plan import autotile

ROOT = Path(__file__).resolve().parents[1]
SIMULATED = ("mps", "xpu", "privateuseone")


class FakeOutOfMemory(Exception):
    """What a host's `OOM_EXCEPTION` may be: a type the engine does not know by itself."""


def fake_model_management(free: int, fp16: bool, bf16: bool) -> types.ModuleType:
    """The parts of ComfyUI's `comfy.model_management` the adapter uses, answering as ComfyUI
    would on a machine whose device is simulated by the CPU."""
    mm = types.ModuleType("comfy.model_management")
    mm.OOM_EXCEPTION = FakeOutOfMemory
    mm.emptied = 0
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.get_free_memory = lambda dev=None, torch_free_too=False: free
    mm.should_use_fp16 = lambda device=None, model_params=0, prioritize_performance=True, manual_cast=False: fp16
    mm.should_use_bf16 = lambda device=None, model_params=0, prioritize_performance=True, manual_cast=False: bf16

    def soft_empty_cache(force=False):
        mm.emptied += 1

    mm.soft_empty_cache = soft_empty_cache
    return mm


@pytest.fixture
def comfy_host(monkeypatch):
    """Loads the real `nodes/host.py` against a fake ComfyUI (`load(mm)` -> the module)."""

    def load(mm: types.ModuleType) -> types.ModuleType:
        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        utils.ProgressBar = object
        comfy.model_management, comfy.utils = mm, utils
        folder_paths = types.ModuleType("folder_paths")
        package = types.ModuleType("tilewise.nodes")  # without its __init__, which needs comfy_api
        package.__path__ = [str(ROOT / "nodes")]
        for name, module in {
            "comfy": comfy,
            "comfy.model_management": mm,
            "comfy.utils": utils,
            "folder_paths": folder_paths,
            "tilewise.nodes": package,
        }.items():
            monkeypatch.setitem(sys.modules, name, module)
        spec = importlib.util.spec_from_file_location("tilewise.nodes.host", ROOT / "nodes" / "host.py")
        host = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(host)
        return host

    return load


def simulated(host: types.ModuleType, mm: types.ModuleType, backend: str):
    """The ComfyUI adapter on a machine whose `backend` device is simulated by the CPU."""

    class Simulated(host.ComfyDevices):
        def backend(self, device):
            return backend

    return Simulated(mm)


# -- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", SIMULATED)
def test_auto_precision_follows_the_hosts_judgement(comfy_host, backend):
    model = describe(ConvNet())
    cases = {
        (True, True): torch.float16,
        (False, True): torch.bfloat16,
        (False, False): torch.float32,
        (True, False): torch.float16,
    }
    for (fp16, bf16), expected in cases.items():
        mm = fake_model_management(8 << 30, fp16, bf16)
        policy = simulated(comfy_host(mm), mm, backend)
        with devices.using(policy):
            assert resolve_dtype("auto", model, torch.device("cpu")) == expected, (fp16, bf16)


def test_auto_precision_runs_what_the_host_chose(comfy_host):
    mm = fake_model_management(8 << 30, fp16=False, bf16=True)
    policy = simulated(comfy_host(mm), mm, "mps")
    image = photo(height=40, width=48)
    auto = upscale(describe(ConvNet()), image, UpscaleOptions(devices=policy))
    assert torch.equal(auto, upscale(describe(ConvNet()), image, UpscaleOptions(precision="bf16")))
    assert not torch.equal(auto, upscale(describe(ConvNet()), image, UpscaleOptions(precision="fp32")))


def test_the_real_cpu_stays_fp32_under_auto_whatever_the_host_says(comfy_host):
    mm = fake_model_management(8 << 30, fp16=True, bf16=True)
    with devices.using(comfy_host(mm).ComfyDevices(mm)):
        assert resolve_dtype("auto", describe(ConvNet()), torch.device("cpu")) == torch.float32


# -- tile plans -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", SIMULATED)
def test_auto_tile_follows_the_hosts_free_memory(comfy_host, backend):
    model = describe(ConvNet())
    mm = fake_model_management(1 << 40, True, False)
    with devices.using(simulated(comfy_host(mm), mm, backend)):
        per_pixel = autotile.bytes_per_pixel(model, torch.device("cpu"), torch.float32)
    assert per_pixel > 0
    for side in (136, 264, 512):
        free = int(
            math.ceil((side + 4) ** 2 * 4 * per_pixel / autotile.SAFETY)
        )  # room for four windows of about `side`
        mm = fake_model_management(free, True, False)
        with devices.using(simulated(comfy_host(mm), mm, backend)):
            plan = plan_run(model, 1200, 1000, TileSettings(pad=4), torch.device("cpu"), torch.float32)
        assert plan.batch == 4, "GPU plans stack windows"
        assert plan.tile == side, (side, plan.tile)
    mm = fake_model_management(64 << 30, True, False)
    with devices.using(simulated(comfy_host(mm), mm, backend)):
        plan = plan_run(model, 1200, 1000, TileSettings(pad=4), torch.device("cpu"), torch.float32)
    assert len(plan.tiles) == 1, "the whole image fits the host's free memory"


def test_free_memory_unknown_falls_back_to_a_fixed_tile():
    class Unknown(devices.DevicePolicy):
        def backend(self, device):
            return "privateuseone"

        def free_memory(self, device):
            return None

    with devices.using(Unknown()):
        plan = plan_run(describe(ConvNet()), 1200, 1000, TileSettings(pad=4), torch.device("cpu"), torch.float32)
    assert plan.tile == 512


def test_memory_probe_runs_on_the_models_device():
    """The probe's input was built on the CPU while the model sat on the device: it raised,
    was swallowed, and was tried again on every run. `meta` stands in for a device without
    allocator statistics (MPS, DirectML)."""
    model = describe(ConvNet())
    meta = torch.device("meta")
    calls = []
    probe = autotile._probe

    def counted(*args):
        calls.append(args)
        return probe(*args)

    mp = pytest.MonkeyPatch()
    mp.setattr(autotile, "_probe", counted)
    try:
        first = autotile.bytes_per_pixel(model, meta, torch.float32)
        assert autotile.bytes_per_pixel(model, meta, torch.float32) == first > 0
    finally:
        mp.undo()
    assert len(calls) == 1, "probed once, then cached"


# -- out of memory ----------------------------------------------------------------------------


class RunsOutAbove(ConvNet):
    def __init__(self, pixels: int, error: BaseException):
        super().__init__()
        self.pixels, self.error, self.raised = pixels, error, 0

    def forward(self, x):
        if x.shape[-2] * x.shape[-1] > self.pixels:
            self.raised += 1
            raise self.error
        return super().forward(x)


@pytest.mark.parametrize("backend", SIMULATED)
def test_out_of_memory_recovery_follows_the_host(comfy_host, backend):
    mm = fake_model_management(8 << 30, False, False)
    policy = simulated(comfy_host(mm), mm, backend)
    image = photo(height=96, width=96)
    want = upscale(describe(ConvNet()), image, UpscaleOptions(tiles=TileSettings(tile=-1), precision="fp32"))
    failing = RunsOutAbove(48 * 48, FakeOutOfMemory("the host's out-of-memory error"))
    got = upscale(
        describe(failing), image, UpscaleOptions(tiles=TileSettings(tile=-1, pad=6), precision="fp32", devices=policy)
    )
    assert failing.raised > 0 and mm.emptied > 0, "recovered through the host's cache emptying"
    assert (got - want).abs().max().item() <= 1e-6
    with pytest.raises(
        ModelRunError, match="the host's out-of-memory error"
    ):  # without the host's policy: a model error
        upscale(
            describe(RunsOutAbove(48 * 48, FakeOutOfMemory("the host's out-of-memory error"))),
            image,
            UpscaleOptions(tiles=TileSettings(tile=-1, pad=6)),
        )


@pytest.mark.parametrize(
    "message",
    [
        "Could not allocate tensor with 18874368 bytes. There is not enough GPU video memory available!",  # DirectML
        "MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.20 GB, max allowed: 9.07 GB).",
        "XPU out of memory. Tried to allocate 2.00 GiB",
    ],
)
def test_plain_policy_recognises_every_backends_out_of_memory(message):
    policy = devices.DevicePolicy()
    assert policy.is_out_of_memory(RuntimeError(message))
    image = photo(height=96, width=96)
    failing = RunsOutAbove(48 * 48, RuntimeError(message))
    got = upscale(describe(failing), image, UpscaleOptions(tiles=TileSettings(tile=-1, pad=6), precision="fp32"))
    want = upscale(describe(ConvNet()), image, UpscaleOptions(tiles=TileSettings(tile=-1), precision="fp32"))
    assert failing.raised > 0 and (got - want).abs().max().item() <= 1e-6


def test_comfyui_oom_exception_set_to_exception_is_not_a_filter(comfy_host):
    mm = fake_model_management(8 << 30, False, False)
    mm.OOM_EXCEPTION = Exception  # what ComfyUI sets where torch has no OOM type
    policy = comfy_host(mm).ComfyDevices(mm)
    assert not policy.is_out_of_memory(ValueError("size mismatch"))
    assert policy.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))


# -- devices ----------------------------------------------------------------------------------


def test_resolve_names_what_exists():
    policy = devices.DevicePolicy()
    assert policy.resolve("cpu") == torch.device("cpu")
    assert policy.resolve("auto") == policy.default_device()
    if not torch.cuda.is_available():
        with pytest.raises(
            devices.DeviceError, match="no cuda device on this machine .found: cpu.; use --device auto or cpu"
        ):
            policy.resolve("cuda")
    with pytest.raises(devices.DeviceError, match="not a device name"):
        policy.resolve("gpu0")
    assert policy.resolve("privateuseone:0") == torch.device("privateuseone", 0), "DirectML: the host knows"


def test_same_device_compares_indices_on_every_backend():
    policy = devices.DevicePolicy()
    for kind in ("cuda", "xpu", "mps"):
        assert policy.same_device(torch.device(kind, 0), torch.device(kind))  # index 0 is current without the backend
        assert not policy.same_device(torch.device(kind, 0), torch.device(kind, 1))
    assert not policy.same_device(torch.device("cpu"), torch.device("cuda"))


def test_comfyui_policy_answers_with_the_hosts_functions(comfy_host):
    mm = fake_model_management(123 << 20, True, False)
    policy = comfy_host(mm).ComfyDevices(mm)
    assert policy.free_memory(torch.device("cpu")) == 123 << 20
    assert policy.default_device() == torch.device("cpu")
    policy.empty_cache(torch.device("cuda"))
    assert mm.emptied == 1


# -- platform-neutral code --------------------------------------------------------------------


PRODUCT_DIRS = ("archs", "engine", "nodes", "scripts")
PRODUCT = sorted([*ROOT.glob("*.py"), *(p for d in PRODUCT_DIRS for p in (ROOT / d).rglob("*.py"))])


def test_product_code_has_no_linux_only_or_process_wide_calls():
    forbidden = (
        "/proc",
        "fcntl",
        "os.fork",
        "sysconf",
        "mallopt",
        "malloc_trim",
        "ctypes",
        "SetCPUAllocator",
        "-march=native",
    )
    found = [(p.relative_to(ROOT).as_posix(), word) for p in PRODUCT for word in forbidden if word in p.read_text()]
    assert not found
    # classes are swapped only on Tilewise's private copies (inference_forms; tested there)
    swaps = [p.relative_to(ROOT).as_posix() for p in PRODUCT if ".__class__ =" in p.read_text()]
    assert swaps == ["engine/compute/inference_forms.py"]
    native = [p for d in PRODUCT_DIRS for pattern in ("*.c", "*.cpp", "*.cu") for p in (ROOT / d).rglob(pattern)]
    assert not native, "no native code compiled at first use"


@pytest.fixture
def no_proc(monkeypatch):
    """`/proc` unavailable to Tilewise's own code (as on Windows and macOS); psutil may still use it."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if str(file).startswith("/proc") and caller.startswith("tilewise"):
            raise FileNotFoundError(f"no such file: {file} (simulated: not Linux)")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def test_memory_and_feature_paths_work_without_proc(no_proc, monkeypatch, caplog):
    cpu = torch.device("cpu")
    assert devices.DevicePolicy().free_memory(cpu) > 0 and devices.resident_bytes() > 0
    assert autotile._probe(describe(ConvNet()), cpu, torch.float32)["bytes"] > 0
    upscale(describe(ConvNet()), photo(height=24, width=24))
    monkeypatch.setattr(devices.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=64 << 20))
    with pytest.raises(ImageError, match="needs about .* GiB but only 0.1 GiB is free on cpu"):
        check_memory(1, 3, (4000, 4000), (16000, 16000), 4, 1, cpu)


@pytest.mark.parametrize("native, warned", [(None, False), (True, False), (False, True)])
def test_bf16_warning_only_where_it_applies(monkeypatch, caplog, native, warned):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="tilewise"):
        assert resolve_dtype("bf16", describe(ConvNet()), torch.device("cpu")) == torch.bfloat16
    assert ("no native bf16" in caplog.text) == warned


def test_cpu_precisions_follow_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.DevicePolicy().usable_precisions(torch.device("cpu")) == (torch.float32, torch.bfloat16)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: None)
    assert devices.DevicePolicy().usable_precisions(torch.device("cpu")) == (torch.float32,)
