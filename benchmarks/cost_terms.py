"""The measurements behind auto tiling's CPU cost terms: one whole-image forward against strips.

The same model copy runs the whole image and then N full-height strips with a margin, round
robin in one long-lived worker thread under `torch.inference_mode()` (as a host runs nodes), on
a crop of a real photograph, channels-last input. Prints every round and the ratios
strips / whole of the best and the median round, next to the pixels the strips compute over the
image's: a ratio below that pixel ratio means the whole image runs slower per pixel (large
tensors, working set), which is what `autotile.large_tensor_rate` and
`autotile.working_set_rate` model (benchmarks/README.md, "CPU cost terms").

    python benchmarks/cost_terms.py --model rrdb6 --size 512 --strips 2 --pad 10 [--precision fp32]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="compact", help="a benchmark model (tiling.benchmark_model)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--strips", type=int, default=2)
    parser.add_argument("--pad", type=int, default=18, help="margin on each inner side of a strip, input pixels")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=4, help="the first round is a warm-up and not counted")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    from skimage import data

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tiling import benchmark_model
    from worker_thread import WorkerThread

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    in_worker = WorkerThread()  # as ComfyUI's prompt worker: one long-lived thread

    model = in_worker(lambda: copy.deepcopy(benchmark_model(args.model).model).to(dtype).eval())
    photo = np.ascontiguousarray(data.hubble_deep_field()[: args.size, : args.size])
    image = torch.from_numpy(photo).float().div(255)[None].movedim(-1, 1).to(dtype)  # NHWC memory
    height, width = image.shape[-2:]
    core = -(-width // args.strips)
    spans = [(max(0, i * core - args.pad), min(width, (i + 1) * core + args.pad)) for i in range(args.strips)]

    def whole():
        model(image)

    def strips():
        for start, stop in spans:
            model(image[..., start:stop].contiguous(memory_format=torch.channels_last))

    times: dict[str, list[float]] = {"whole": [], "strips": []}
    for _ in range(args.rounds):
        for name, fn in (("whole", whole), ("strips", strips)):
            start = time.perf_counter()
            in_worker(fn)
            times[name].append(time.perf_counter() - start)
    in_worker.shutdown()
    pixels = sum(stop - start for start, stop in spans) / width
    print(
        f"{args.model} {height}x{width} {args.precision}, {args.strips} strips with a {args.pad}-px margin "
        f"({pixels:.2f}x the pixels), {args.threads} threads"
    )
    for name, values in times.items():
        print(f"  {name:<7}" + " ".join(f"{t:7.3f}" for t in values))
    best = min(times["strips"][1:]) / min(times["whole"][1:])
    median = statistics.median(times["strips"][1:]) / statistics.median(times["whole"][1:])
    print(f"  strips / whole: best {best:.2f}x, median {median:.2f}x (pixels {pixels:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
