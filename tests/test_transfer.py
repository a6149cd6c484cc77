"""The GPU transfer path's bookkeeping, exercised on the CPU: results pasted one batch late
(as on CUDA, where the copy of a batch overlaps the next batch's compute) must equal the direct
path, including fp32 re-runs, out-of-memory resumes and cancels."""

from __future__ import annotations

import pytest
import torch
from conftest import photo
from test_runner import ConvNet, FailsOnCalls, Overflows, describe
from tilewise.engine import CancelledError, TileSettings, run_tiled
from tilewise.engine.compute import devices, transfer


@pytest.fixture
def deferred(monkeypatch):
    monkeypatch.setattr(transfer, "DEFER_ON_CPU", True)


SETTINGS = TileSettings(tile=32, pad=3, batch=2)


def _direct(model, image, **kwargs):
    return run_tiled(describe(model), image, settings=kwargs.pop("settings", SETTINGS), **kwargs)


def test_deferred_pasting_equals_direct(deferred):
    image = torch.cat([photo("chelsea", 0, 0, 70, 90), photo("coffee", 0, 0, 70, 90)])
    reports = []
    got = run_tiled(describe(ConvNet()), image, settings=SETTINGS, progress=lambda d, t: reports.append((d, t)))
    transfer.DEFER_ON_CPU = False
    want = _direct(ConvNet(), image)
    assert torch.equal(got, want)
    assert [d for d, _ in reports] == list(range(1, reports[-1][1] + 1)) and reports[-1][0] == reports[-1][1]


def test_deferred_overflow_check_reruns_in_fp32(deferred):
    image = photo("astronaut", 0, 0, 40, 40)
    out = run_tiled(describe(Overflows(), scale=1), image, settings=SETTINGS, dtype=torch.float16)
    assert torch.isfinite(out).all() and (out - image).abs().max().item() < 1e-4


def test_deferred_out_of_memory_keeps_the_pending_batch(deferred):
    image = photo("chelsea", 0, 0, 96, 96)
    want = run_tiled(describe(ConvNet()), image, settings=TileSettings(tile=48, pad=3, batch=1))
    got = run_tiled(describe(FailsOnCalls({3})), image, settings=TileSettings(tile=48, pad=3, batch=1))
    assert (got - want).abs().max().item() <= 1e-6


def test_deferred_cancel(deferred):
    model = describe(ConvNet())
    done = []
    with pytest.raises(CancelledError):
        run_tiled(
            model,
            photo("chelsea", 0, 0, 96, 96),
            settings=TileSettings(tile=24, pad=3, batch=1),
            progress=lambda d, t: done.append(d),
            cancel=lambda: len(model.model.calls) >= 3,
        )
    assert len(model.model.calls) == 3


def test_staging_buffers_alternate():
    copies = object.__new__(transfer.CudaCopies)  # pinned memory needs CUDA; the pool logic is plain Python
    copies._staging = {(1,): [torch.zeros(1), torch.ones(1)]}
    first = copies._buffer((1,))
    second = copies._buffer((1,))
    assert first is not second and copies._buffer((1,)) is first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: pinned memory and a copy stream")
@pytest.mark.cuda
def test_cuda_transfer_path_equals_cpu():
    image = photo("chelsea", 0, 0, 96, 96)
    cpu = run_tiled(describe(ConvNet()), image, settings=SETTINGS)
    gpu = run_tiled(describe(ConvNet()), image, settings=SETTINGS, device=torch.device("cuda"))
    assert (cpu - gpu).abs().max().item() < 1e-4


# -- the fast path and its safety net, with a CPU double of the CUDA calls --------------------


class CpuCopies:
    """`transfer.CudaCopies` on the CPU: uploads copy, downloads copy into a "staging" tensor and
    hand back an event. A failure can be scheduled for the n-th upload, download or event wait
    (1-based), as a CUDA driver error would surface."""

    made = 0
    failures: dict[str, int] = {}
    error: BaseException = RuntimeError("CUDA error: an illegal memory access was encountered")

    def __init__(self, device):
        type(self).made += 1
        self.calls = {"upload": 0, "download": 0, "wait": 0}

    def _maybe_fail(self, where: str) -> None:
        self.calls[where] += 1
        if self.failures.get(where) == self.calls[where]:
            raise self.error

    def upload(self, windows):
        self._maybe_fail("upload")
        return windows.clone()

    def download(self, result):
        self._maybe_fail("download")
        copies = self

        class Event:
            def synchronize(self):
                copies._maybe_fail("wait")

        return result.float().clamp(0, 1).clone(), Event(), []


class ClaimsCuda(devices.DevicePolicy):
    """A policy for which the CPU compute device is a CUDA device: the runner then takes the fast path."""

    def backend(self, device):
        return "cuda" if device == torch.device("cpu", 0) else "cpu"


@pytest.fixture
def fast_path(monkeypatch):
    monkeypatch.setattr(transfer, "CudaCopies", CpuCopies)
    monkeypatch.setattr(CpuCopies, "made", 0)
    monkeypatch.setattr(CpuCopies, "failures", {})
    transfer.reset_fast_path()
    yield
    transfer.reset_fast_path()


def _fast_run(model, image, settings=SETTINGS):
    with devices.using(ClaimsCuda()):
        return run_tiled(describe(model), image, settings=settings, device=torch.device("cpu", 0))


def test_fast_path_equals_plain_path(fast_path):
    image = torch.cat([photo("chelsea", 0, 0, 70, 90), photo("coffee", 0, 0, 70, 90)])
    got = _fast_run(ConvNet(), image)
    assert CpuCopies.made == 1 and transfer.fast_path_failure() is None
    assert torch.equal(got, _direct(ConvNet(), image))


@pytest.mark.parametrize("where, at", [("upload", 1), ("upload", 3), ("download", 2), ("wait", 1), ("wait", 2)])
def test_fast_path_failure_reruns_the_tile_on_the_plain_path_and_stays_off(fast_path, caplog, monkeypatch, where, at):
    monkeypatch.setattr(CpuCopies, "failures", {where: at})
    image = torch.cat([photo("chelsea", 0, 0, 70, 90), photo("coffee", 0, 0, 70, 90)])
    got = _fast_run(ConvNet(), image)
    assert torch.equal(got, _direct(ConvNet(), image))
    assert "illegal memory access" in transfer.fast_path_failure()
    warnings = [r for r in caplog.records if "fast path failed" in r.getMessage()]
    assert len(warnings) == 1
    made = CpuCopies.made
    assert torch.equal(_fast_run(ConvNet(), image), got)
    assert CpuCopies.made == made, "after a failure the process keeps the plain path"
    assert len([r for r in caplog.records if "fast path failed" in r.getMessage()]) == 1


def test_fast_path_out_of_memory_is_an_out_of_memory(fast_path, monkeypatch):
    """An out-of-memory error in a copy is not a broken fast path: the tile is halved as usual."""
    monkeypatch.setattr(CpuCopies, "failures", {"download": 1})
    monkeypatch.setattr(CpuCopies, "error", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    image = photo("chelsea", 0, 0, 96, 96)
    settings = TileSettings(tile=48, pad=3, batch=1)
    got = _fast_run(ConvNet(), image, settings)
    assert transfer.fast_path_failure() is None
    assert (got - _direct(ConvNet(), image, settings=settings)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_overflow_check_finds_every_non_finite_value(dtype):
    """`all_finite` (one min/max reduction) says what `isfinite(x).all()` says, wherever a NaN or
    an infinity sits, in every precision the runner checks."""
    image = torch.rand(2, 3, 37, 41).to(dtype).contiguous(memory_format=torch.channels_last)
    assert bool(transfer.all_finite(image))
    generator = torch.Generator().manual_seed(0)
    for value in (float("nan"), float("inf"), float("-inf")):
        for _ in range(5):
            spoiled = image.clone()
            index = tuple(int(torch.randint(n, (1,), generator=generator)) for n in spoiled.shape)
            spoiled[index] = value
            assert not bool(transfer.all_finite(spoiled)), (value, index)
            assert bool(transfer.all_finite(spoiled)) == bool(torch.isfinite(spoiled).all())
    assert bool(transfer.all_finite(torch.full((1, 3, 4, 4), 60000.0, dtype=dtype)))  # large but finite
