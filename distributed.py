"""Image folders on a Ray cluster: files spread over actors, each holding one copy of the model.

`python -m tilewise upscale INPUT... -o OUT --ray [ADDRESS]` comes here after the CLI has
checked its options and planned its (input, output) pairs exactly as for a local run; each actor
runs the engine's `upscale_file` on the pairs it is given, so the pixels, metadata and frames
are the local run's. What Ray adds, and this module handles:

- placement: one actor per GPU by default (`num_gpus` per actor; Ray gives each actor its own
  device, and the engine's `auto` device finds it), or `actors` CPU actors;
- faults: a file whose actor dies (killed, out of memory, its machine lost) goes back to the
  queue and is run by another actor (a replacement is started in the dead one's place); a file
  that fails for a reason of its own comes back as a result with its message, reported like the
  local batch does;
- memory: the driver holds paths only, and at most two files per actor are in flight;
- nothing partial: outputs are written atomically by the workers; the temporary files of a
  worker killed mid-write are removed at the end.

Inputs and outputs are paths that every node of the cluster sees (a shared filesystem).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Files in flight per actor: one running, one waiting, so an actor never idles between files.
IN_FLIGHT = 2
#: Replacements started for actors that died, per actor slot, before the run gives up.
MAX_REPLACEMENTS = 3


class ClusterError(RuntimeError):
    """Ray could not be reached or kept no actor alive; the message says what to do."""


@dataclass(frozen=True)
class FileResult:
    source: str
    destination: str
    size: tuple[int, int] | None = None  # (height, width) when written
    error: str | None = None  # the file's own failure, as the local CLI would print it


class _Worker:
    """A Ray actor: loads the model once, then upscales the files it is given."""

    def __init__(self, model: str, hints, options):
        from .engine import load_model

        self.model = load_model(model, hints=hints)
        self.options = options

    def upscale(self, source: str, destination: str) -> FileResult:
        from .engine import ImageError, TilewiseError, upscale_file

        try:
            size = upscale_file(self.model, source, destination, self.options)
        except (ImageError, TilewiseError) as error:
            text = str(error)
            return FileResult(source, destination, error=text if source in text else f"{source}: {text}")
        return FileResult(source, destination, size=(int(size[0]), int(size[1])))

    def pid(self) -> int:
        return os.getpid()


def connect(address: str | None, num_cpus: int | None = None):
    """Joins the cluster at `address` (`auto`: the one running on this machine), or starts a
    local one (None); returns the `ray` module."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError("ray is not installed", name="ray") from None
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(
                f"cannot reach a Ray cluster at '{address}' ({error}); start one with `ray start --head`, or omit the "
                f"address to run a local one"
            ) from None
    return ray


class ActorPool:
    """The actors of one run and the files they work on (see the module docstring)."""

    def __init__(self, ray, model: str, hints, options, actors: int, gpus_per_actor: float, cpus_per_actor: float):
        self.ray = ray
        worker = ray.remote(_Worker)
        self._factory = lambda: worker.options(num_gpus=gpus_per_actor, num_cpus=cpus_per_actor).remote(
            model, hints, options
        )
        self.actors = [self._factory() for _ in range(actors)]
        self.replacements = [0] * actors
        self.retried = 0

    def run(
        self, jobs: Sequence[tuple[Path, Path]], on_result: Callable[[FileResult, ActorPool], None] | None = None
    ) -> list[FileResult]:
        ray = self.ray
        from ray.exceptions import GetTimeoutError, RayActorError, WorkerCrashedError

        died = (RayActorError, WorkerCrashedError)
        pending = deque((str(s), str(d)) for s, d in jobs)
        in_flight: dict = {}  # object ref -> (actor slot, the actor handle, job)
        results: list[FileResult] = []

        def submit(slot: int) -> None:
            job = pending.popleft()
            actor = self.actors[slot]
            in_flight[actor.upscale.remote(*job)] = (slot, actor, job)

        for slot in range(len(self.actors)):
            for _ in range(IN_FLIGHT):
                if pending:
                    submit(slot)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, job = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except died:
                pending.appendleft(job)  # another actor runs it
                self.retried += 1
                self._replace(slot, actor)
            except GetTimeoutError:  # not raised without a timeout; kept for clarity of intent
                pending.appendleft(job)
            else:
                results.append(result)
                if on_result is not None:
                    on_result(result, self)
            free = [s for s in range(len(self.actors)) if self._load(in_flight, s) < IN_FLIGHT]
            for candidate in free:
                while pending and self._load(in_flight, candidate) < IN_FLIGHT:
                    submit(candidate)
            if pending and not in_flight:
                raise ClusterError("every Ray actor died; see the Ray logs (ray status) for why")
        return results

    @staticmethod
    def _load(in_flight: dict, slot: int) -> int:
        return sum(1 for s, _, _ in in_flight.values() if s == slot)

    def _replace(self, slot: int, dead) -> None:
        """A new actor in the dead one's slot (once per death: its other files fail the same way)."""
        if self.actors[slot] is not dead:
            return
        if self.replacements[slot] >= MAX_REPLACEMENTS:
            raise ClusterError(
                f"Ray actors in slot {slot} died {MAX_REPLACEMENTS + 1} times; see the Ray logs (ray status) for why"
            )
        self.replacements[slot] += 1
        self.actors[slot] = self._factory()

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def upscale_files(
    jobs: Sequence[tuple[Path, Path]],
    model: str,
    hints,
    options,
    *,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    on_result: Callable[[FileResult, ActorPool], None] | None = None,
) -> list[FileResult]:
    """Runs (input, output) pairs on Ray; one `FileResult` per pair, in completion order.

    `actors` defaults to one per GPU of the cluster (each with `gpus_per_actor`, default 1), or
    to the cluster's CPUs when it has no GPU (one CPU each)."""
    ray = connect(address)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else max(1, int(resources.get("CPU", 1)))
    cpus = 1.0 if not gpus_per_actor else 0.0
    started = time.time()
    pool = ActorPool(ray, model, hints, options, actors, gpus_per_actor, cpus)
    try:
        return pool.run(jobs, on_result)
    finally:
        pool.shutdown()
        _remove_temporaries({Path(d).parent for _, d in jobs}, started)


def _remove_temporaries(folders: set[Path], since: float) -> None:
    """Temporary files a killed worker left behind (`.tilewise-*`, made during this run)."""
    for folder in folders:
        try:
            leftovers = [p for p in folder.glob(".tilewise-*") if p.stat().st_mtime >= since - 1]
        except OSError:
            continue
        for path in leftovers:
            path.unlink(missing_ok=True)
