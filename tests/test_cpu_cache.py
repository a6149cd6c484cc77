"""The caching CPU allocator: reuse inside runs, nothing kept outside them, bounded, thread-safe,
and an engine run that is bit-for-bit the same with or without it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tilewise.engine import cpu_cache, heap

MIB = 2**20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator is built on Linux only")


@pytest.fixture(scope="module")
def lib():
    loaded = cpu_cache.load()
    assert loaded is not None, f"the allocator did not build here: {cpu_cache.unavailable_reason()}"
    return loaded


def floats(mib: float) -> torch.Tensor:
    return torch.empty(int(mib * MIB) // 4)


def test_blocks_freed_during_a_run_are_reused_and_dropped_after_it(lib):
    before = cpu_cache.stats()
    with cpu_cache.caching(64 * MIB) as active:
        assert active
        first = floats(4)
        address = first.data_ptr()
        del first
        assert cpu_cache.stats()["kept_bytes"] == 4 * MIB
        second = floats(4)
        assert second.data_ptr() == address
        del second
    after = cpu_cache.stats()
    assert after["hits"] - before["hits"] == 1 and after["misses"] - before["misses"] == 1
    assert after["kept_bytes"] == 0 and after["live_blocks"] == before["live_blocks"]


def test_small_blocks_and_blocks_outside_runs_are_left_to_torch(lib):
    before = cpu_cache.stats()
    outside = floats(8)
    with cpu_cache.caching(64 * MIB):
        small = floats(0.5)
        del small
    del outside
    after = cpu_cache.stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_a_block_alive_when_the_run_ends_is_freed_not_kept(lib):
    base = cpu_cache.stats()["live_blocks"]
    with cpu_cache.caching(64 * MIB):
        survivor = floats(2)
        survivor.fill_(3.0)
    assert cpu_cache.stats()["live_blocks"] == base + 1
    assert bool((survivor == 3.0).all())
    del survivor
    assert cpu_cache.stats()["live_blocks"] == base and cpu_cache.stats()["kept_bytes"] == 0


def test_kept_memory_stays_under_the_limit(lib):
    with cpu_cache.caching(3 * MIB):
        a, b = floats(2), floats(2)
        del a, b
        assert cpu_cache.stats()["kept_bytes"] == 2 * MIB  # the second one did not fit


def test_a_kept_block_serves_requests_up_to_one_eighth_smaller(lib):
    with cpu_cache.caching(64 * MIB):
        block = floats(8)
        address = block.data_ptr()
        del block
        hits = cpu_cache.stats()["hits"]
        slightly_smaller = floats(7.5)
        assert slightly_smaller.data_ptr() == address and cpu_cache.stats()["hits"] == hits + 1
        del slightly_smaller
        misses = cpu_cache.stats()["misses"]
        much_smaller = floats(6)
        assert cpu_cache.stats()["misses"] == misses + 1


def test_kept_blocks_never_lift_the_footprint_much_above_the_peak_demand(lib):
    """A kept block that fits no request is given back before it could add to the run's peak."""
    with cpu_cache.caching(1024 * MIB):
        big = floats(8)
        del big  # peak demand so far: 8 MiB, all of it kept
        first = floats(2)  # 8 kept + 2 live = 10 MiB: within 1.25x of the 8 MiB peak
        assert cpu_cache.stats()["kept_bytes"] == 8 * MIB
        second = floats(2)  # 8 + 4 would be 12 MiB: the unusable 8 MiB block goes
        assert cpu_cache.stats()["kept_bytes"] == 0
        del first, second


def test_tensors_alive_together_never_share_memory_across_threads(lib):
    failures: list[str] = []

    def worker(seed: int) -> None:
        with cpu_cache.caching(256 * MIB):
            for step in range(40):
                live = [floats(1 + (seed + i) % 3).fill_(seed * 100 + step * 10 + i) for i in range(3)]
                for i, tensor in enumerate(live):
                    if not bool((tensor == seed * 100 + step * 10 + i).all()):
                        failures.append(f"thread {seed} step {step} tensor {i} was overwritten")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert cpu_cache.stats()["kept_bytes"] == 0


def test_running_out_of_memory_inside_a_run_is_an_ordinary_error(lib):
    with cpu_cache.caching(64 * MIB):
        kept = floats(4)
        del kept
        with pytest.raises(RuntimeError):
            torch.empty(2**60, dtype=torch.uint8)
        assert cpu_cache.stats()["kept_bytes"] == 0  # given back before the second attempt
        assert floats(4).numel() == MIB


def test_engine_runs_use_the_cache_and_give_the_same_bits(lib, monkeypatch):
    from conftest import photo
    from test_runner import describe
    from tilewise.engine import TileSettings, run_tiled

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 3, 3, padding=1))
    descriptor = describe(model, scale=1)
    image = photo(height=256, width=256)
    settings = TileSettings(tile=128, pad=16)
    before = cpu_cache.stats()
    cached = run_in_thread(lambda: run_tiled(descriptor, image, settings=settings))
    used = cpu_cache.stats()
    assert used["hits"] > before["hits"]
    monkeypatch.setattr(heap, "CACHE_SHARE", 0.0)  # a zero limit: the cache stays off
    plain = run_in_thread(lambda: run_tiled(descriptor, image, settings=settings))
    assert cpu_cache.stats()["hits"] == used["hits"]
    assert torch.equal(cached, plain)


def run_in_thread(fn):
    result = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.parametrize("compiler, reason", [("/nonexistent/c++", "No such file"), ("false", "exit status 1")])
def test_without_a_working_compiler_runs_go_on_without_the_cache(tmp_path: Path, compiler, reason):
    code = (
        "import logging, torch\n"
        "from tilewise.engine import cpu_cache, heap\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "with heap.reusing_heap():\n"
        "    x = torch.ones(2**20) * 2\n"
        "assert cpu_cache.load() is None and cpu_cache.stats() is None\n"
        "print('reason:', cpu_cache.unavailable_reason())\n"
    )
    env = {**os.environ, "CXX": compiler, "TILEWISE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert reason in done.stdout
    assert "without its caching CPU allocator" in done.stderr
    assert not list(tmp_path.glob("*.so"))  # no half-built library left behind


def test_switched_off_by_the_environment(tmp_path: Path):
    code = "from tilewise.engine import cpu_cache\nassert cpu_cache.load() is None\nprint(cpu_cache.unavailable_reason())\n"
    env = {**os.environ, "TILEWISE_CPU_CACHE": "0", "TILEWISE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TILEWISE_CPU_CACHE=0" in done.stdout


def test_paused_blocks_behave_as_without_the_cache(lib):
    with cpu_cache.caching(64 * MIB):
        kept = floats(4)
        del kept
        before = cpu_cache.stats()
        with cpu_cache.paused():
            assert cpu_cache.stats()["kept_bytes"] == 0  # freed on entry
            again = floats(4)
            del again
            assert cpu_cache.stats()["kept_bytes"] == 0
        assert (cpu_cache.stats()["hits"], cpu_cache.stats()["misses"]) == (before["hits"], before["misses"])
        kept = floats(4)
        del kept
        assert cpu_cache.stats()["kept_bytes"] == 4 * MIB  # caching again after the pause


def test_the_memory_probe_sees_growth_the_cache_would_hide(lib):
    """autotile's RSS probe must measure as without the cache, or tile plans would depend on
    whether a compiler was there to build it."""
    from tilewise.engine import autotile

    block = 64 * MIB // 4

    def forward(_x):
        return torch.empty(block).fill_(1.0)

    class Descriptor:
        input_channels = 3

    with heap.reusing_heap():
        warm = torch.empty(block).fill_(1.0)
        del warm  # kept by the cache: an unpaused probe would reuse it and see no growth
        growth = autotile._rss_growth(forward, Descriptor(), torch.float32) * 128 * 128
    assert growth > 32 * MIB
