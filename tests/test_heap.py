"""The run-time heap policy: large freed tensors are reused inside a run and released after it."""

from __future__ import annotations

import resource

import pytest
import torch

from tilewise.engine import heap
from tilewise.engine.autotile import resident_bytes

pytestmark = pytest.mark.skipif(not heap.available(), reason="needs glibc (Linux): the policy is a no-op elsewhere")

BLOCK = 64 * 2**20 // 4  # a 64 MiB float32 tensor: above glibc's mmap threshold


def faults_of_second_allocation() -> int:
    """Minor page faults taken by filling a large tensor right after an equal one was freed."""
    first = torch.empty(BLOCK)
    first.fill_(1.0)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.empty(BLOCK)
    second.fill_(2.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_blocks_are_reused_inside_a_run_only():
    pages = BLOCK * 4 // 4096
    outside = faults_of_second_allocation()
    with heap.reusing_heap():
        inside = faults_of_second_allocation()
    assert outside > pages // 2  # a fresh mmap: every page faults again
    assert inside < pages // 10  # the freed block came back from the heap


def test_memory_goes_back_when_the_outermost_run_ends():
    base = resident_bytes()
    with heap.reusing_heap():
        with heap.reusing_heap():
            block = torch.empty(4 * BLOCK)
            block.fill_(1.0)
            del block
        held = resident_bytes()  # the inner exit keeps the outer run's heap
        assert held - base > 128 * 2**20
    assert resident_bytes() - base < 32 * 2**20
    assert faults_of_second_allocation() > BLOCK * 4 // 4096 // 2  # normal thresholds are back
