"""Speed: Tilewise's paths against the naive one-tile-at-a-time fp32 scheme, in the same process.

For Compact, ESRGAN (RRDB), SPAN, ParagonSR2 photo and SwinIR with seeded weights, on a real
photograph (scikit-image's hubble_deep_field; `--megapixels` crops it), prints per model:
  naive      ComfyUI core's scheme: 512-px tiles, 32-px feathered overlap, one tile at a time,
             fp32, default memory layout, the model's upstream code: spandrel's module, or for
             our own architectures their plain forms (the baseline, ratio 1.00)
  naive+ours (our architectures only) the same scheme with the module's fast forms
  default    `upscale` with default options (auto tile, channels-last where the model gains,
             fp32 on CPU)
  fp32 fast  the fastest exact fp32 path: default plus NHWC input forced for every model
  compiled   (with --compile) default plus `torch.compile` (exact to 1e-6, slow first call)
  bf16       precision bf16 (cast, or autocast for models that fail when cast)
Each path runs `--repeats` times (default 2): `cold` is the first call, which includes the
once-per-model probes (receptive radius, memory per pixel) and any compilation; `warm` is the
best later call and gives the ratio over naive (warm too), i.e. the throughput of a batch or
video. Also printed: peak resident-memory growth and the max abs difference from an untiled
fp32 run, and a channels-last table (fp32, NHWC over NCHW input) per model.
Every path runs in one long-lived worker thread, as in ComfyUI and A1111 (`--main-thread`: in
the main thread, as the CLI runs).
Targets on CPU: default >= 1.6x naive, bf16 >= 3x; tiled-vs-untiled max error <= 1e-4 (fp32).

    python benchmarks/speed.py [--megapixels 0.25] [--repeats 2] [--threads 2] [--models compact,esrgan]
                               [--compile] [--main-thread]
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tilewise.archs.windows import plain_forms  # noqa: E402
from tilewise.engine import TileSettings, UpscaleOptions, load_model, run_tiled, upscale  # noqa: E402
from tilewise.engine.compute.devices import cpu_has_native_bf16, resident_bytes  # noqa: E402
from tilewise.engine.compute.precision import prefers_channels_last  # noqa: E402
from tiling import PARAGONSR2_FIXTURES, benchmark_model, naive_tiled  # noqa: E402


def models() -> dict:
    return {
        "compact": lambda: benchmark_model("compact"),
        "esrgan": lambda: benchmark_model("rrdb4"),
        "span": lambda: benchmark_model("span"),
        "paragonsr2-photo": lambda: load_model(PARAGONSR2_FIXTURES / "paragonsr2_photo_x2.safetensors", cache=None),
        "swinir": lambda: benchmark_model("swinir"),
    }


class PeakRSS:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    rss = staticmethod(resident_bytes)

    def __enter__(self):
        self.base = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            self._stop.wait(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Host:
    """Where the paths run: one long-lived worker thread, as in ComfyUI (its prompt worker) and
    A1111 (gradio's worker threads), or the main thread, as in the CLI. It matters on Linux:
    glibc serves a worker thread's large blocks from fresh mappings whatever its thresholds, so
    memory a forward frees is not reused there, only page-faulted in again."""

    def __init__(self, worker: bool = True):
        self.worker = worker
        self._pool = ThreadPoolExecutor(max_workers=1) if worker else None

    def run(self, fn):
        return self._pool.submit(fn).result() if self._pool else fn()


HOST = Host()


def interleaved(paths: dict, repeats: int) -> dict:
    """Runs the paths round-robin `repeats` times, so that load from other processes on this
    shared machine falls on all of them alike, each round starting one path later (the path
    after naive ran measurably slower than the same path later in a round); per path
    (cold s, warm s, result, peak RSS)."""
    times: dict = {label: [] for label in paths}
    results: dict = {}
    memory = dict.fromkeys(paths, 0)
    labels = list(paths)
    for round_ in range(max(1, repeats)):
        for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:
            fn = paths[label]
            with PeakRSS() as peak:
                start = time.perf_counter()
                results[label] = HOST.run(fn)
                times[label].append(time.perf_counter() - start)
            memory[label] = max(memory[label], peak.peak)
    return {label: (t[0], min(t[1:] or t), results[label], memory[label]) for label, t in times.items()}


def bench(name: str, descriptor, image: torch.Tensor, repeats: int, compile_: bool) -> None:
    cpu = "cpu"
    # The naive scheme runs spandrel's module as the host's core node would. The engine swaps
    # inference forms into `descriptor.model` in place (`inference_forms.prepare`), which would
    # speed up a baseline sharing that module; it gets an untouched copy made before any run.
    # Our own architectures carry their fast forms in the module itself (gathered windows, the
    # fused attention kernel, in-place residuals); `plain_forms` runs their upstream-shaped code.
    plain = copy.deepcopy(descriptor)
    untiled = run_tiled(descriptor, image, settings=TileSettings(tile=-1, channels_last=False))
    schemes = {
        "naive": lambda: _upstream(lambda: naive_tiled(plain, image)),
        "default": lambda: upscale(descriptor, image, UpscaleOptions(device=cpu)),
        "fp32 fast": lambda: _forced_nhwc_upscale(descriptor, image),
        "bf16": lambda: upscale(descriptor, image, UpscaleOptions(device=cpu, precision="bf16")),
    }
    if type(descriptor.model).__module__.startswith("tilewise."):
        schemes["naive+ours"] = lambda: naive_tiled(plain, image)  # the same scheme with our forms
    if compile_:
        schemes["compiled"] = lambda: upscale(
            descriptor, image, UpscaleOptions(device=cpu, tiles=TileSettings(compile=True))
        )
    params = sum(p.numel() for p in descriptor.model.parameters())
    print(
        f"\n{name} ({descriptor.architecture.id}, {params:,} params, x{descriptor.scale}, channels-last: "
        f"{prefers_channels_last(descriptor.model)})",
        flush=True,
    )
    print(
        f"  {'path':<10} {'cold s':>8} {'warm s':>8} {'speed vs naive':>15} {'peak RSS MiB':>13} {'max abs diff':>13}"
    )
    measured = interleaved(schemes, repeats)
    baseline = measured["naive"][1]
    for label, (cold, warm, result, memory) in measured.items():
        print(
            f"  {label:<10} {cold:>8.2f} {warm:>8.2f} {baseline / warm:>15.2f} {memory / 2**20:>13.0f} "
            f"{(result - untiled).abs().max().item():>13.2e}",
            flush=True,
        )
    layouts = interleaved(
        {
            "nchw": lambda: run_tiled(descriptor, image, settings=TileSettings(tile=0, channels_last=False)),
            "nhwc": lambda: _forced_nhwc(
                descriptor, lambda: run_tiled(descriptor, image, settings=TileSettings(tile=0, channels_last=True))
            ),
        },
        repeats,
    )
    CHANNELS_LAST[name] = layouts["nchw"][1] / layouts["nhwc"][1]


def _upstream(run):
    with plain_forms():
        return run()


def _forced_nhwc_upscale(descriptor, image):
    return _forced_nhwc(descriptor, lambda: upscale(descriptor, image, UpscaleOptions(device="cpu", precision="fp32")))


def _forced_nhwc(descriptor, run):
    """`run()` with NHWC input even for a model the policy keeps in NCHW (what the policy avoids)."""
    model = descriptor.model
    model.prefers_channels_last = True
    try:
        return run()
    finally:
        del model.prefers_channels_last


CHANNELS_LAST: dict[str, float] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megapixels", type=float, default=0.25, help="crop of the photo to use (about 0.87 for all of it)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per path: the first is cold, the best later one warm"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add a torch.compile row (minutes of compilation per model on CPU)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--main-thread",
        action="store_true",
        help="run in the main thread, as the CLI does (default: a worker thread, as the hosts do)",
    )
    parser.add_argument("--models", default=",".join(models()))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global HOST
    HOST = Host(worker=not args.main_thread)
    photo = data.hubble_deep_field()
    side = int((args.megapixels * 1e6) ** 0.5)
    crop = photo[: min(side, photo.shape[0]), : min(side, photo.shape[1])]
    image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div(255)[None]
    print(
        f"photo: skimage hubble_deep_field crop {image.shape[-1]}x{image.shape[-2]} "
        f"({image.shape[-1] * image.shape[-2] / 1e6:.2f} MP), "
        f"CPU, {args.threads} threads, native bf16: {cpu_has_native_bf16()}, "
        f"run in {'a worker thread (as ComfyUI and A1111)' if HOST.worker else 'the main thread (as the CLI)'}"
    )
    table = models()
    for name in args.models.split(","):
        bench(name, table[name](), image, args.repeats, args.compile)
    print("\nchannels-last input, speed over NCHW (fp32, auto tile):")
    for name, gain in CHANNELS_LAST.items():
        print(f"  {name:<18} {gain:.2f}")


if __name__ == "__main__":
    main()
