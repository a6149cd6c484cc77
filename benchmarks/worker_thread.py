"""The thread benchmarks run their paths in: one long-lived worker under `torch.inference_mode()`,
as ComfyUI's prompt worker runs nodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


class WorkerThread:
    """`worker(fn)` runs `fn()` in the one worker thread under inference mode and returns its result."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1)

    def __call__(self, fn):
        def run():
            with torch.inference_mode():
                return fn()

        return self._pool.submit(run).result()

    def shutdown(self) -> None:
        self._pool.shutdown()
