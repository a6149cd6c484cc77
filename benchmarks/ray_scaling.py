"""Ray: throughput with 1 and 2 actors, and the Ray path's per-file overhead against a local run.

A local Ray cluster (`ray.init(num_cpus=2)`) upscales a folder of photo crops with the
engine, once per configuration, in this process; every figure is a ratio against the local CLI
path (`upscale_file` in a loop, one model) run in the same process:

  local                  the CLI's loop: files per second (the baseline, 1.00)
  ray 1 actor            the same files on one Ray actor
  ray 2 actors           two actors (Ray gives each one CPU, so torch runs one thread in each)
  start-up               a run of one file on one actor: actor start and model load, paid once per run
  overhead per file      ((ray 1 actor - start-up) - local) / files: scheduling and transfer per file

    python benchmarks/ray_scaling.py [--files 24] [--size 96] [--model builtin:paragonsr2-realtime-2x]
    python benchmarks/ray_scaling.py --files 12 --size 320      # where the model's work dominates
    python benchmarks/ray_scaling.py --video 60                 # a clip: 1 and 2 actors, differences at the joins

With `--video N` it upscales an N-frame clip instead: locally, and on Ray with 1 and 2 actors (the
video cut into one segment per actor, each warmed up), and prints the times and the largest
difference of any frame to the local run's, per temporal mode.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data


def photos(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = data.astronaut()
    paths = []
    for index in range(count):
        y, x = (index * 37) % (512 - size), (index * 53) % (512 - size)
        paths.append(folder / f"p{index:03d}.png")
        Image.fromarray(np.ascontiguousarray(photo[y : y + size, x : x + size])).save(paths[-1])
    return paths


def video(frames: int, model_name: str) -> None:
    import av
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from clips import make_video
    from tilewise import distributed
    from tilewise.engine import UpscaleOptions, VideoOptions, load_model, upscale_video_file

    def decoded(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as base:
            root = Path(base)
            source = make_video(root / "clip.mp4", frames=frames, fps=24)
            model = load_model(model_name)
            print(f"{frames}-frame clip, {model_name}, 2 CPUs")
            for temporal in ("feedback", "stabilize"):
                options = VideoOptions(upscale=UpscaleOptions(device="cpu", output_device="cpu"), temporal=temporal)
                start = time.perf_counter()
                upscale_video_file(model, source, root / "local.mp4", options)
                local = time.perf_counter() - start
                reference = decoded(root / "local.mp4")
                row = [f"  {temporal:<10} local {local:6.2f} s"]
                for actors in (1, 2):
                    out = root / f"ray{actors}.mp4"
                    start = time.perf_counter()
                    distributed.upscale_video(source, out, model_name, None, options, actors=actors)
                    seconds = time.perf_counter() - start
                    worst = max(
                        int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(reference, decoded(out))
                    )
                    row.append(f"ray {actors} actor(s) {seconds:6.2f} s, largest difference {worst}/255")
                print("; ".join(row))
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=int, metavar="FRAMES", help="measure a clip of this many frames instead")
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--model", default="builtin:paragonsr2-realtime-2x")
    args = parser.parse_args()
    if args.video:
        video(args.video, args.model)
        return

    import ray
    from tilewise import distributed
    from tilewise.engine import UpscaleOptions, load_model, upscale_file

    with tempfile.TemporaryDirectory() as base:
        root = Path(base)
        inputs = photos(root / "in", args.files, args.size)
        options = UpscaleOptions(device="cpu")

        def local() -> float:
            torch.set_num_threads(2)
            model = load_model(args.model)
            start = time.perf_counter()
            for path in inputs:
                upscale_file(model, path, root / "local" / path.name, options)
            return time.perf_counter() - start

        def on_ray(actors: int, files: list[Path] = inputs) -> float:
            out = root / f"ray{actors}-{len(files)}"
            jobs = [(path, out / path.name) for path in files]
            start = time.perf_counter()
            distributed.upscale_files(jobs, args.model, None, options, actors=actors)
            return time.perf_counter() - start

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            on_ray(1)  # warm-up: worker start-up and imports are paid once per cluster, not per run
            times = {"local": local(), "ray 1 actor": on_ray(1), "ray 2 actors": on_ray(2)}
            start_up = on_ray(1, inputs[:1])
        finally:
            ray.shutdown()
        ray_out = root / f"ray2-{len(inputs)}"
        same = all((ray_out / p.name).read_bytes() == (root / "local" / p.name).read_bytes() for p in inputs)
    print(f"{args.files} files of {args.size}x{args.size}, {args.model}, 2 CPUs")
    print(f"  {'path':<14} {'s':>7} {'files/s':>8} {'vs local':>9}")
    for name, seconds in times.items():
        print(f"  {name:<14} {seconds:7.2f} {args.files / seconds:8.2f} {times['local'] / seconds:8.2f}x")
    overhead = (times["ray 1 actor"] - start_up - times["local"]) / args.files
    print(f"  start-up of a run (actor, model): {start_up:.2f} s")
    print(f"  Ray overhead per file after start-up (1 actor against local): {overhead * 1000:.0f} ms")
    print(f"  2 actors against 1: {times['ray 1 actor'] / times['ray 2 actors']:.2f}x")
    print(f"  outputs byte-identical to local: {same}")


if __name__ == "__main__":
    main()
