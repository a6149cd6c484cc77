"""The GPU transfer path's bookkeeping, exercised on the CPU: results pasted one batch late
(as on CUDA, where the copy of a batch overlaps the next batch's compute) must equal the direct
path, including fp32 re-runs, out-of-memory resumes and cancels."""

from __future__ import annotations


import pytest
import torch

from conftest import photo
from test_runner import ConvNet, FailsOnCalls, Overflows, describe
from tilewise.engine import CancelledError, TileSettings, run_tiled
from tilewise.engine import transfer


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
        run_tiled(model, photo("chelsea", 0, 0, 96, 96), settings=TileSettings(tile=24, pad=3, batch=1), progress=lambda d, t: done.append(d), cancel=lambda: len(model.model.calls) >= 3)
    assert len(model.model.calls) == 3


def test_staging_buffers_alternate():
    transfers = transfer.Transfers(torch.device("cpu"), torch.device("cpu"))
    if not torch.cuda.is_available():  # pinned memory needs CUDA; the pool logic is plain Python
        transfers._staging[(1,)] = [torch.zeros(1), torch.ones(1)]
        first = transfers._buffer((1,))
        second = transfers._buffer((1,))
        assert first is not second and transfers._buffer((1,)) is first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: pinned memory and a copy stream")
@pytest.mark.cuda
def test_cuda_transfer_path_equals_cpu():
    image = photo("chelsea", 0, 0, 96, 96)
    cpu = run_tiled(describe(ConvNet()), image, settings=SETTINGS)
    gpu = run_tiled(describe(ConvNet()), image, settings=SETTINGS, device=torch.device("cuda"))
    assert (cpu - gpu).abs().max().item() < 1e-4
