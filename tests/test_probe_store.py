"""CPU memory probes kept between processes (`engine/plan/probe_store.py`), so that every process on
a machine plans the same auto windows for the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runner import ConvNet, describe
from tilewise.engine.plan import autotile, probe_store

CPU = torch.device("cpu")


@pytest.fixture
def store(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TILEWISE_PROBE_CACHE", "1")
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path))
    return tmp_path / probe_store.FILE


@pytest.fixture
def varying_probe(monkeypatch):
    """A probe whose figure changes on every call, as the resident-memory one does between
    processes; returns the list of figures it gave."""
    given: list[float] = []

    def probe(descriptor, device, dtype):
        given.append(1000.0 + 100 * len(given))
        return {"bytes": given[-1], "largest": 48.0, "sizes": [48.0, 16.0], "totals": [96.0, 16.0]}

    monkeypatch.setattr(autotile, "_probe", probe)
    return given


def new_process_view(model: ConvNet):
    """The same weights in a fresh module, as another process would load them."""
    autotile._records.clear()
    twin = ConvNet()
    twin.load_state_dict(model.state_dict())
    return describe(twin)


def test_a_later_process_plans_with_the_first_probe(store, varying_probe):
    first = describe(ConvNet())
    assert autotile.bytes_per_pixel(first, CPU, torch.float32) == 1000.0
    again = new_process_view(first.model)
    assert autotile.bytes_per_pixel(again, CPU, torch.float32) == 1000.0
    assert varying_probe == [1000.0]  # probed once
    assert autotile.auto_tile_size(first, CPU, torch.float32) == autotile.auto_tile_size(again, CPU, torch.float32)
    assert autotile.largest_tensor_per_pixel(again, CPU, torch.float32) == 48.0  # kept with it, not probed again
    assert autotile.large_tensor_rate(again, CPU, torch.float32, 10**6) == pytest.approx(  # the profile too
        1 + (autotile.LARGE_TENSOR_PENALTY - 1) * 96 / 112
    )
    assert varying_probe == [1000.0]
    assert list(json.loads(store.read_text()).values()) == [
        {"bytes": 1000.0, "largest": 48.0, "sizes": [48.0, 16.0], "totals": [96.0, 16.0]}
    ]


def test_without_the_store_each_process_probes(monkeypatch, varying_probe, tmp_path):
    monkeypatch.setenv("TILEWISE_PROBE_CACHE", "0")
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(tmp_path))
    first = describe(ConvNet())
    autotile.bytes_per_pixel(first, CPU, torch.float32)
    autotile.bytes_per_pixel(new_process_view(first.model), CPU, torch.float32)
    assert varying_probe == [1000.0, 1100.0]
    assert not list(tmp_path.iterdir())


def test_checkpoints_of_one_shape_share_a_probe_other_shapes_and_dtypes_do_not(store, varying_probe):
    """The tensors a forward creates follow from the weights' shapes, not their values: another
    checkpoint of the same shapes reads the kept record; another dtype or shape is probed."""
    model = describe(ConvNet())
    autotile.bytes_per_pixel(model, CPU, torch.float32)
    autotile.bytes_per_pixel(model, CPU, torch.bfloat16)
    assert len(varying_probe) == 2
    other = ConvNet()
    with torch.no_grad():
        other.load_state_dict(model.model.state_dict())
        next(other.parameters()).view(-1)[0] += 1e-3
    assert autotile.bytes_per_pixel(describe(other), CPU, torch.float32) == varying_probe[0]
    assert autotile.bytes_per_pixel(describe(ConvNet(scale=3)), CPU, torch.float32) == varying_probe[2]
    assert len(varying_probe) == 3
    assert len(json.loads(store.read_text())) == 3
    assert probe_store.key(model.model, "m", values=False) == probe_store.key(other, "m", values=False)
    assert probe_store.key(model.model, "m") != probe_store.key(other, "m"), "the margin's key keeps the values"


def test_a_module_without_state_is_not_kept():
    assert probe_store.key(torch.nn.Identity(), "x") is None  # no state: nothing to key on


def test_first_writer_wins_between_processes(store):
    assert probe_store.put("k", 5.0) == 5.0
    assert probe_store.put("k", 7.0) == 5.0  # another process stored it meanwhile
    assert probe_store.get("k") == 5.0


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "x", "j": -1, "n": NaN}', ""])
def test_a_corrupt_file_is_ignored_and_rewritten(store, content):
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(content)
    assert probe_store.get("k") is None
    assert probe_store.put("k", 3.0) == 3.0
    assert json.loads(store.read_text()) == {"k": 3.0}


def test_an_unwritable_cache_only_means_probing_again(monkeypatch, tmp_path):
    monkeypatch.setenv("TILEWISE_PROBE_CACHE", "1")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TILEWISE_CACHE_DIR", str(blocker / "below"))  # a directory under a file
    assert probe_store.put("k", 2.0) == 2.0
    assert probe_store.get("k") is None


def test_a_later_process_plans_the_same_windows_without_a_probe_forward(tmp_path: Path):
    """Real probes in two processes: the whole record (working memory, tensor profile) is kept,
    so the second process that plans a SPAN (a thousand tensors per forward) runs no probe
    forward and plans the same windows, with the same memory figure and large-tensor costs."""
    code = (
        "import torch\n"
        "from model_zoo import ZOO\n"
        "from tilewise.engine.model.loading import describe_state_dict\n"
        "from tilewise.engine.plan import autotile, planner\n"
        "cpu = torch.device('cpu')\n"
        "model = describe_state_dict(ZOO['SPAN'].state_dict(seed=0))\n"
        "probe, probes = autotile._probe, []\n"
        "autotile._probe = lambda *args: probes.append(1) or probe(*args)\n"
        "autotile.free_memory = lambda device: 16 << 30\n"
        "plan = planner.plan_run(model, 700, 760, planner.TileSettings(tile=0, pad=12), cpu)\n"
        "rates = [autotile.large_tensor_rate(model, cpu, torch.float32, side * side) for side in (128, 512, 1024)]\n"
        "memory = autotile.bytes_per_pixel(model, cpu, torch.float32)\n"
        "print(len(probes), memory, [t.window for t in plan.tiles], rates)\n"
    )
    env = {
        **os.environ,
        "TILEWISE_PROBE_CACHE": "1",
        "TILEWISE_CACHE_DIR": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).parent),
    }
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    (probed, first), (again, second) = (run.stdout.strip().split(" ", 1) for run in runs)
    assert (probed, again) == ("1", "0"), "the second process ran a probe forward"
    assert first == second and float(first.split()[0]) > 0
    (record,) = json.loads((tmp_path / probe_store.FILE).read_text()).values()
    assert {"bytes", "largest", "sizes", "totals"} <= set(record)
    assert record["sizes"] == sorted(record["sizes"], reverse=True) and record["sizes"][0] == record["largest"]


def test_a_long_tensor_profile_is_pooled_without_counting_fewer_bytes_as_large():
    """Beyond `PROFILE_STEPS` distinct sizes the smallest are pooled at the largest size among
    them: the kept profile is short enough for the store, keeps every byte, and never rates a
    window cheaper than the full profile would."""
    sizes = [float(n % 97 + 1) for n in range(1000)]
    steps, totals = autotile._profile_steps(sizes)
    assert len(steps) == autotile.PROFILE_STEPS <= probe_store.MAX_LIST
    assert steps == sorted(set(steps), reverse=True) and steps[0] == max(sizes)
    assert sum(totals) == pytest.approx(sum(sizes))
    for threshold in range(0, 100, 7):
        full = sum(size for size in sizes if size > threshold)
        kept = sum(total for step, total in zip(steps, totals) if step > threshold)
        assert kept >= full - 1e-9
        if threshold >= steps[-2]:
            assert kept == pytest.approx(full), "the sizes kept apart are counted exactly"


def test_the_tile_margin_is_probed_once_per_model_file(store, monkeypatch):
    """The receptive-radius probe (many forwards for a deep RRDB) runs in the first process
    that uses a model; later processes with the same weights read the kept margin."""
    from tilewise.engine.compute.precision import forward_fn
    from tilewise.engine.plan import receptive

    calls = []
    probe = receptive._probe
    monkeypatch.setattr(receptive, "_probe", lambda *args: calls.append(1) or probe(*args))
    first = describe(ConvNet())
    context = receptive.model_context(first, forward_fn(first, first.model), CPU)
    assert calls == [1] and context.exact and context.pad > 0
    receptive._cache.clear()
    twin = ConvNet()
    twin.load_state_dict(first.model.state_dict())
    again = describe(twin)
    assert receptive.model_context(again, forward_fn(again, again.model), CPU) == context
    assert calls == [1], "read from the store, not probed again"
    other = describe(ConvNet())  # other weights: probed
    with torch.no_grad():
        next(other.model.parameters()).add_(0.5)
    receptive.model_context(other, forward_fn(other, other.model), CPU)
    assert calls == [1, 1]
    stored = json.loads(store.read_text())
    assert sum(isinstance(v, dict) and v.get("pad") == context.pad for v in stored.values()) >= 1


def test_a_corrupt_margin_record_means_probing_again(store, monkeypatch):
    from tilewise.engine.compute.precision import forward_fn
    from tilewise.engine.plan import receptive

    model = describe(ConvNet())
    key = receptive._stored_key(model, 1)
    store.write_text(json.dumps({key: {"pad": "many"}, "x": [1, 2]}))
    calls = []
    probe = receptive._probe
    monkeypatch.setattr(receptive, "_probe", lambda *args: calls.append(1) or probe(*args))
    context = receptive.model_context(model, forward_fn(model, model.model), CPU)
    assert calls == [1] and context.pad > 0


def test_records_with_lists_where_numbers_belong_are_ignored(store, monkeypatch):
    """The store accepts short lists of numbers (tensor profiles); a record that has one where a
    number belongs, or unpaired profile lists, is not used: the model is probed again."""
    from tilewise.engine.compute.precision import forward_fn
    from tilewise.engine.plan import receptive

    model = describe(ConvNet())
    memory_key = autotile._stored_key(model, CPU, torch.float32)
    margin_key = receptive._stored_key(model, 1)
    store.write_text(
        json.dumps(
            {
                memory_key: {"bytes": [1.0, 2.0], "largest": 4.0, "sizes": [4.0], "totals": [4.0]},
                margin_key: {"pad": [3.0], "exact": 1, "bounded": 1, "partial": 0},
            }
        )
    )
    assert autotile.known_bytes_per_pixel(model, CPU, torch.float32) is None
    assert autotile.bytes_per_pixel(model, CPU, torch.float32) > 0  # probed
    context = receptive.model_context(model, forward_fn(model, model.model), CPU)
    assert context.pad > 0 and context.exact
    twin = describe(ConvNet())
    store.write_text(json.dumps({memory_key: {"bytes": 1.0, "largest": 4.0, "sizes": [4.0, 2.0], "totals": [4.0]}}))
    assert autotile.known_bytes_per_pixel(twin, CPU, torch.float32) is None


def test_a_partial_margin_is_replaced_once_probed_in_full(store, monkeypatch):
    """A margin probed only as far as a `reach` is kept as partial; the first run that needs the
    full margin probes again and keeps that, so later processes read it instead of probing."""
    from tilewise.engine.compute.precision import forward_fn
    from tilewise.engine.plan import receptive

    calls = []
    probe, effective = receptive._probe, receptive.effective_radius
    monkeypatch.setattr(receptive, "_probe", lambda *args: calls.append(args[-1]) or probe(*args))

    def still_moving_at_the_stop(forward, image, scale, align, minimum, stop):
        return (stop, False) if stop is not None else effective(forward, image, scale, align, minimum, stop)

    monkeypatch.setattr(receptive, "effective_radius", still_moving_at_the_stop)  # as a deep net's would be
    model = describe(ConvNet())
    forward = forward_fn(model, model.model)
    assert receptive.model_context(model, forward, CPU, reach=1).partial
    receptive._cache.clear()
    full = receptive.model_context(model, forward, CPU)
    assert not full.partial and calls == [1, None]
    receptive._cache.clear()
    assert receptive.model_context(model, forward, CPU) == full
    assert calls == [1, None], "the full margin was not kept"
