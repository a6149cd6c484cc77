"""Private copies: `precision.private_copy` against deep-copying at full precision and casting after.

Tilewise never casts or moves the module a host shares; it runs a private copy, which a GPU run
makes afresh for every call. For each model and dtype this prints the best and median time of
both ways (interleaved, in this process) and their ratio. Memory needs no measuring: the old way
holds a full-precision duplicate of the model (its size is printed) before casting it, the new
one only the cast tensors.

    python benchmarks/private_copy.py [--models rrdb23,span,dat] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tilewise.engine.compute.precision import private_copy  # noqa: E402
from tiling import benchmark_model  # noqa: E402


def deepcopy_then_cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The way before `private_copy`."""
    return copy.deepcopy(model).to(device="cpu", dtype=dtype)


def cast_once(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return private_copy(model, torch.device("cpu"), dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="rrdb23,span,dat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} interleaved repeats")
    print(f"{'model':8} {'dtype':8} {'MB':>6} {'old ms':>14} {'new ms':>14} {'new/old':>8}")
    for name in args.models.split(","):
        model = benchmark_model(name).model.eval()
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        for dtype in (torch.bfloat16, torch.float32):
            for way in (deepcopy_then_cast, cast_once):  # warm-up
                way(model, dtype)
            times: dict = {deepcopy_then_cast: [], cast_once: []}
            for _ in range(args.repeats):
                for way in times:
                    start = time.perf_counter()
                    way(model, dtype)
                    times[way].append((time.perf_counter() - start) * 1e3)
            old, new = times[deepcopy_then_cast], times[cast_once]
            print(
                f"{name:8} {str(dtype)[6:]:8} {size:6.1f} "
                f"{min(old):6.1f} / {statistics.median(old):5.1f} {min(new):6.1f} / {statistics.median(new):5.1f} "
                f"{min(new) / min(old):7.2f}x"
            )


if __name__ == "__main__":
    main()
