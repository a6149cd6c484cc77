"""`tilewise doctor`: versions, devices, and a self-check that can fail."""

from __future__ import annotations

import json

import pytest
import torch
from tilewise.cli import main
from tilewise.engine import doctor
from tilewise.engine.compute import transfer


@pytest.fixture(scope="module")
def report():
    return doctor.run("cpu")


def test_reports_versions_devices_and_passing_checks(report):
    assert {"python", "torch", "spandrel", "tilewise", "host"} <= set(report.versions)
    assert report.versions["torch"] == torch.__version__
    cpu = next(entry for entry in report.devices if entry["device"] == "cpu")
    assert "fp32" in cpu["precisions"] and cpu["free_memory_gib"] > 0
    names = [check.name for check in report.checks]
    assert names[0] == "tiled equals untiled" and "out-of-memory recovery" in names and names[-1].startswith("speed")
    assert report.passed, [c for c in report.checks if not c.passed]
    recovery = next(c for c in report.checks if c.name == "out-of-memory recovery")
    assert recovery.detail.startswith(("1 ", "2 ", "3 ")) and recovery.value == 0.0


def test_cli_json_and_exit_status(report, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run", lambda device: report)  # the module's run, printed
    assert main(["doctor", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True and data["device"] == "cpu"
    assert all({"name", "passed", "detail"} <= set(check) for check in data["checks"])


def test_a_failing_check_fails_the_command(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "EXACT", -1.0)  # nothing can be that exact: the tiled checks fail
    assert main(["doctor", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] tiled equals untiled" in out and "some checks FAILED" in out


def test_an_unknown_device_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["doctor", "--device", "cuda"]) == 2
    assert "no cuda device on this machine" in capsys.readouterr().err


def test_fast_path_check_compares_both_paths(monkeypatch):
    """On a policy that calls the compute device CUDA the check runs both copy paths (here
    with the CPU double of the CUDA calls) and fails when they differ."""
    from test_transfer import ClaimsCuda, CpuCopies

    monkeypatch.setattr(transfer, "CudaCopies", CpuCopies)
    monkeypatch.setattr(CpuCopies, "failures", {})
    descriptor = doctor.load_model(doctor.MODEL, cache=None)
    image = doctor.check_image()
    base = doctor.UpscaleOptions(
        tiles=doctor.TileSettings(tile=-1), precision="fp32", device="cpu:0", devices=ClaimsCuda()
    )
    transfer.reset_fast_path()
    with doctor.devices.using(ClaimsCuda()):
        check = doctor._fast_path(descriptor, image, base, ClaimsCuda(), torch.device("cpu", 0))
    assert check.passed and check.value == 0.0

    class Corrupts(CpuCopies):
        def download(self, result):
            staging, event, keep = super().download(result)
            return staging.add_(0.01).clamp_(0, 1), event, keep

    monkeypatch.setattr(transfer, "CudaCopies", Corrupts)
    with doctor.devices.using(ClaimsCuda()):
        check = doctor._fast_path(descriptor, image, base, ClaimsCuda(), torch.device("cpu", 0))
    assert not check.passed
    transfer.reset_fast_path()
