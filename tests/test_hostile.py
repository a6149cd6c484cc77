"""Hostile checkpoints: nothing in them ever runs, each gets a refusal naming the file, and a
folder with bad files still lists and loads the good ones."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import hostile_files
import numpy as np
import pytest
import torch
from model_zoo import ZOO
from PIL import Image
from tilewise.engine import ModelFileError, UnsafeModelError, load_model, scan_folder


class Payload:
    """Unpickling this calls `func(*args)`; every variant tries to create `marker`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payloads(marker: Path) -> dict[str, object]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": Payload(subprocess.Popen, ["touch", str(marker)]),
        "nested": {
            "params_ema": {"conv.weight": torch.zeros(1), "meta": [{"deep": Payload(os.system, f"touch {marker}")}]}
        },
    }


def _write(kind: str, obj, path: Path) -> Path:
    if kind == "zip":  # a normal torch .pth/.ckpt archive with the payload inside
        torch.save(obj, path)
    elif kind == "legacy":  # torch's pre-1.6 pickle format
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.mark.parametrize("name", ["os.system", "exec", "eval", "subprocess", "nested"])
@pytest.mark.parametrize(
    "kind,suffix",
    [
        ("zip", ".pth"),
        ("zip", ".ckpt"),
        ("legacy", ".pt"),
        ("raw", ".bin"),
        ("raw", ".safetensors"),
        ("zip", ".safetensors"),
    ],
)
def test_pickled_code_never_runs(tmp_path, name, kind, suffix):
    marker = tmp_path / "pwned"
    path = _write(kind, payloads(marker)[name], tmp_path / f"evil{suffix}")
    with pytest.raises(ModelFileError) as error:
        load_model(path, cache=None)
    assert not marker.exists(), "the payload ran"
    message = str(error.value)
    assert message.startswith(f"evil{suffix}:")
    assert isinstance(error.value, UnsafeModelError) or "not a checkpoint" in message


def test_the_payloads_are_live(tmp_path):
    """The tests above can fail: an unrestricted unpickler runs every payload."""
    for name, obj in payloads(tmp_path / "pwned").items():
        marker = tmp_path / "pwned"
        marker.unlink(missing_ok=True)
        pickle.loads(pickle.dumps(obj))
        for _ in range(50):  # Popen runs asynchronously
            if marker.exists():
                break
            __import__("time").sleep(0.02)
        assert marker.exists(), name


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_with_code_is_refused(tmp_path):
    class Scripted(torch.nn.Module):
        def forward(self, x):
            return x * 2

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(path))
    with pytest.raises(UnsafeModelError, match="model.pt: is a TorchScript archive"):
        load_model(path, cache=None)


def test_zip_bomb_inside_a_pth(tmp_path):
    path = tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data/99", b"\0" * (16 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UnsafeModelError, match="bomb.pth: .*zip bomb"):
        load_model(path, cache=None)


def test_folder_with_bad_files_lists_and_loads_the_good_ones(tmp_path):
    marker = tmp_path / "pwned"
    good = ZOO["Compact"].save(tmp_path / "models" / "4x_good.safetensors", seed=0)
    ZOO["ESRGAN-2x"].save(tmp_path / "models" / "sub" / "2x_rrdb.pth", seed=0)
    _write("zip", payloads(marker)["os.system"], tmp_path / "models" / "evil.pth")
    (tmp_path / "models" / "page.pth").write_text("<html><body>404</body></html>")
    (tmp_path / "models" / "empty.safetensors").write_bytes(b"")
    (tmp_path / "models" / "notes.txt").write_text("not a model")
    (tmp_path / "models" / ".hidden.pth").write_bytes(b"junk")
    entries = {e.name: e for e in scan_folder(tmp_path / "models")}
    assert sorted(entries) == ["4x_good.safetensors", "empty.safetensors", "evil.pth", "page.pth", "sub/2x_rrdb.pth"]
    assert entries["4x_good.safetensors"].model.architecture.id == "Compact"
    assert entries["sub/2x_rrdb.pth"].model.scale == 2
    for name in ("evil.pth", "page.pth", "empty.safetensors"):
        assert entries[name].model is None and entries[name].error.startswith(name)
    assert not marker.exists()
    assert load_model(good) is entries["4x_good.safetensors"].model  # the cache serves the good ones


def test_symlink_loops_do_not_hang(tmp_path):
    folder = tmp_path / "models"
    ZOO["Compact"].save(folder / "a.safetensors", seed=0)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert [e.name for e in scan_folder(folder)] == ["a.safetensors"]


# ------------------------------------------------------------------ round two: crashes, hangs, bombs

ENTRY = Path(__file__).with_name("hostile_entry.py")
#: Address space each entry point's process may use: far below what any of the files asks for.
MEMORY_LIMIT = 4 << 30


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "models"
    hostile_files.write_all(folder)
    return folder


def _run_entry(entry: str, folder: Path, tmp_path: Path) -> dict[str, dict]:
    """Runs `hostile_entry.py` under a memory limit and a timeout; returns its reports by file."""
    resource = pytest.importorskip("resource", reason="the memory limit needs POSIX resource limits")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    image = tmp_path / "in.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(image)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(ENTRY), entry, str(folder), str(image), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
        env=env,
        cwd=tmp_path,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines and lines[-1] == "done", (
        f"{entry} died (status {done.returncode}): {done.stderr[-2000:]}"
    )
    reports = {r["file"]: r for r in map(json.loads, lines[:-1])}
    assert set(reports) == {p.name for p in folder.iterdir()}, "every file was seen"
    return reports


def _assert_cli_refused_each(reports: dict[str, dict]) -> None:
    """Each file: exit 2, one clean line naming it, nothing written."""
    for name, report in reports.items():
        assert report["code"] == 2, report
        lines = report["message"].strip().splitlines()
        assert len(lines) == 1, lines
        _clean(lines[0], name)
        assert not report["written"]


def _clean(message: str, name: str) -> None:
    assert name in message
    assert "unexpected" not in message and "Traceback" not in message, message
    assert "\x1b" not in message and "\r" not in message, "control characters from the file are escaped"
    assert len(message) < 2500, f"{len(message)} characters"


@pytest.fixture(scope="module")
def hostile_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "images"
    hostile_files.write_images(folder)
    return folder


def test_cli_refuses_image_bombs_before_decoding_them(hostile_images, tmp_path):
    """A .npy header claiming 10 GB, a 900 MP PNG (Pillow's bomb limit) and a 169 MP PNG whose
    4x result cannot fit: each refused from its header, in a process limited to 4 GiB."""
    _assert_cli_refused_each(_run_entry("images", hostile_images, tmp_path))


def test_an_image_too_large_for_free_memory_is_refused_before_decoding(hostile_images, monkeypatch):
    from tilewise.engine.compute.devices import DevicePolicy
    from tilewise.engine.errors import ImageError
    from tilewise.engine.image import images

    monkeypatch.setattr(DevicePolicy, "free_memory", lambda self, device: 2 << 30)
    monkeypatch.setattr(images.Image.Image, "load", lambda self: pytest.fail("decoded before the size check"))
    with pytest.raises(ImageError, match=r"13000x13000; decoding it needs about 4\.7 GiB but only 2\.0 GiB is free"):
        images.read_image(hostile_images / "large_169mp.png")


@pytest.mark.parametrize("entry", ["info", "upscale"])
def test_cli_refuses_every_hostile_file_in_one_line(entry, hostile_folder, tmp_path):
    _assert_cli_refused_each(_run_entry(entry, hostile_folder, tmp_path))


def test_scan_folder_lists_every_hostile_file_with_its_refusal(hostile_folder, tmp_path):
    for name, report in _run_entry("scan", hostile_folder, tmp_path).items():
        assert report["code"] == 0, f"{name} loaded"
        _clean(report["message"], name)


def test_webui_start_up_lists_every_hostile_file_and_says_why(hostile_folder, tmp_path):
    """Listed at start-up with the reason logged, and upscaling with one returns the image unchanged."""
    for name, report in _run_entry("a1111", hostile_folder, tmp_path).items():
        assert report["code"] == 0, f"{name} is not listed, or changed the image"
        _clean(report["message"], name)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nested_key.pth", "levels deep"),
        ("self_referencing_key.pth", "parts"),
        ("bytearray_bomb.pth", "builtins.bytearray"),
        ("device_tensor_view.pth", "_rebuild_device_tensor_from_cpu_tensor"),
        ("zero_stride_view.pth", "a view larger than its data"),
        ("storage_bomb.pth", "declares 6000000000 bytes of tensor data"),
        ("legacy_storage_bomb.pt", "declares 6000000000 bytes of tensor data"),
        ("compact_huge_index.safetensors", "needs more than"),
        ("overflowing_offsets.safetensors", "no valid offsets or shape"),
        ("huge_shape.safetensors", "no valid offsets or shape"),
        ("deep_header.safetensors", "nested far deeper"),
        ("external_in_function_branch.onnx", "separate files (ONNX external data"),
        ("constant_of_shape.onnx", "builds a tensor of 6.4 GiB"),
        ("endless_loop.onnx", "uses Loop"),
    ],
)
def test_each_hostile_file_gets_its_own_reason(hostile_folder, name, expected):
    if name.endswith(".onnx"):
        pytest.importorskip("onnx", reason="ONNX files need the onnx extra")
    with pytest.raises(ModelFileError, match=re.escape(expected)):
        load_model(hostile_folder / name, cache=None)


def test_long_keys_are_escaped_and_capped(hostile_folder):
    with pytest.raises(ModelFileError) as refused:
        load_model(hostile_folder / "long_key.pth", cache=None)
    _clean(str(refused.value), "long_key.pth")
    assert "\\x1b" in str(refused.value)


def test_a_probe_run_that_never_ends_is_stopped(tmp_path):
    """The load-time probes run under a time limit (onnxruntime's terminate flag), for graphs the
    static checks cannot judge; shown here on the endless Loop, whose refusal is bypassed."""
    pytest.importorskip("onnx", reason="ONNX files need the onnx extra")
    from tilewise.engine.model import onnx_backend

    path = hostile_files.onnx_endless_loop(tmp_path / "loop.onnx")
    session = onnx_backend.new_session(path.read_bytes(), ["CPUExecutionProvider"])
    interface = SimpleNamespace(input_name="x", output_name="y")
    onnx_backend._probe_limit.deadline = 0.5
    try:
        with pytest.raises(onnx_backend._ProbeTimeout, match="ran longer than 0.5 s"):
            onnx_backend._run_session(session, interface, np.zeros((1, 3, 4, 4), np.float32))
    finally:
        onnx_backend._probe_limit.deadline = None


def test_temporary_files_never_follow_a_planted_link(tmp_path, monkeypatch):
    """The name of a temporary output is unpredictable and created exclusively: a link planted
    under the name (here forced to be guessed right) is skipped, its target left alone."""
    from tilewise.engine import storage

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".tilewise-guessed.mp4").symlink_to(victim)
    names = iter(["guessed", "fresh"])
    monkeypatch.setattr(storage.secrets, "token_hex", lambda n: next(names))
    made = storage.exclusive_file(tmp_path, ".mp4")
    assert made.name == ".tilewise-fresh.mp4" and made.stat().st_size == 0
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_get_the_permissions_of_a_normal_write(tmp_path, umask):
    """mkstemp's 0600 once survived the rename onto the output; now the umask decides."""
    image = tmp_path / "in.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(image)
    commands = [
        (
            ["upscale", str(image), "--model", "builtin:magic-kernel-sharp-2x", "-o", str(tmp_path / "out.png"), "-q"],
            tmp_path / "out.png",
        )
    ]
    try:
        import av  # noqa: F401
        from clips import make_video

        make_video(tmp_path / "in.mp4", frames=2, fps=5)
        commands.append(
            (
                [
                    "upscale-video",
                    str(tmp_path / "in.mp4"),
                    "--model",
                    "builtin:magic-kernel-sharp-2x",
                    "-o",
                    str(tmp_path / "out.mp4"),
                    "-q",
                ],
                tmp_path / "out.mp4",
            )
        )
    except ImportError:
        pass
    for argv, output in commands:
        done = subprocess.run(
            [sys.executable, "-m", "tilewise", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: os.umask(umask),
        )
        assert done.returncode == 0, done.stderr
        assert output.stat().st_mode & 0o777 == 0o666 & ~umask, f"{output.name}: {oct(output.stat().st_mode & 0o777)}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tilewise-")], "no temporary file is left"
