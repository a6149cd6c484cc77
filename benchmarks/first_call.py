"""First call against a later one: what the probes cost a user the first time a model is used.

A 64 MB RRDB (RealESRGAN x4plus's shape: 23 blocks, seeded weights) saved to a file and
loaded as a host would, then `upscale` on a real photograph twice in one process, with a fresh
probe store (the memory and tile-margin probes run in the first call only). Prints both times
and their ratio; the goal is a first call at most 1.5x a later one.

    python benchmarks/first_call.py [--blocks 23] [--side 1000] [--precision auto] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=23)
    parser.add_argument("--side", type=int, default=1000, help="crop of the photograph (1000 x 872 at most: 0.87 MP)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["TILEWISE_CACHE_DIR"] = folder  # a fresh probe store
        os.environ["TILEWISE_PROBE_CACHE"] = "1"
        import numpy as np
        import torch
        from safetensors.torch import save_file
        from skimage import data

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from tilewise.engine import UpscaleOptions, load_model, upscale
        from tiling import benchmark_model

        torch.set_num_threads(args.threads)
        built = benchmark_model(f"rrdb{args.blocks}").model
        path = Path(folder) / "rrdb.safetensors"
        save_file({k: v.contiguous() for k, v in built.state_dict().items()}, str(path))
        model = load_model(path, cache=None)
        photo = data.hubble_deep_field()[: args.side, : args.side]
        image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float().div(255)
        options = UpscaleOptions(precision=args.precision)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            upscale(model, image, options)
            times.append(time.perf_counter() - start)
    megabytes = path.stat().st_size / 2**20 if path.exists() else sum(p.numel() * 4 for p in built.parameters()) / 2**20
    print(
        f"RRDB {args.blocks} blocks ({megabytes:.0f} MB), {image.shape[-1]}x{image.shape[-2]} "
        f"({image.shape[-1] * image.shape[-2] / 1e6:.2f} MP), "
        f"precision {args.precision}, {args.threads} threads"
    )
    print(f"  first call {times[0]:.1f} s, later call {times[1]:.1f} s, first/later {times[0] / times[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
