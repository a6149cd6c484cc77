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

import logging
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


@dataclass(frozen=True)
class SegmentResult:
    part: str
    frames: int = 0
    error: str | None = None


class _Worker:
    """A Ray actor: loads the model once, then upscales the files it is given."""

    def __init__(self, model: str, hints, options):
        """`options`: UpscaleOptions for image files, VideoOptions for video segments."""
        from .engine import load_model

        self.model = load_model(model, hints=hints)
        self.options = options

    def upscale(self, source: str, destination: str) -> FileResult:
        from .engine import TilewiseError, named_message, upscale_file

        try:
            size = upscale_file(self.model, source, destination, self.options)
        except TilewiseError as error:  # ImageError included
            return FileResult(source, destination, error=named_message(source, error))
        return FileResult(source, destination, size=(int(size[0]), int(size[1])))

    def video_segment(self, source: str, segment, video, part: str) -> SegmentResult:
        """Upscales one segment of a video (`engine/video/segments.py`) into the lossless file `part`."""
        from .engine import TilewiseError
        from .engine.video import segments

        try:
            frames = segments.upscale_segment(self.model, source, segment, video, self.options, part)
        except (TilewiseError, ValueError) as error:
            return SegmentResult(part, error=str(error))
        return SegmentResult(part, frames=frames)

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
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
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

    def run(self, jobs: Sequence[tuple], on_result: Callable | None = None, method: str = "upscale") -> list:
        """Runs `method` of the actors on each job's arguments; one result per job, in completion order."""
        ray = self.ray
        from ray.exceptions import RayActorError, WorkerCrashedError

        died = (RayActorError, WorkerCrashedError)
        pending = deque(jobs)
        in_flight: dict = {}  # object ref -> (actor slot, the actor handle, job)
        results: list[FileResult] = []

        def submit(slot: int) -> None:
            job = pending.popleft()
            actor = self.actors[slot]
            in_flight[getattr(actor, method).remote(*job)] = (slot, actor, job)

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


def _placement(ray, actors: int | None, gpus_per_actor: float | None) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor): one actor per GPU, or per CPU without GPUs."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else max(1, int(resources.get("CPU", 1)))
    return actors, gpus_per_actor, (1.0 if not gpus_per_actor else 0.0)


def upscale_video(
    source: Path,
    destination: Path,
    model: str,
    hints,
    options,
    *,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    codec: str | None = None,
    crf: int = 18,
    segments_per_actor: int = 1,
    on_result: Callable[[SegmentResult, ActorPool], None] | None = None,
):
    """A video cut at scene cuts or keyframes into segments, each upscaled on an actor with its
    temporal warm-up (`engine/video/segments.py`), then joined here with the source's timing and
    audio; returns the engine's VideoReport. The lossless parts live beside the destination (on
    the shared storage) and are removed at the end."""
    import secrets
    import shutil

    from .engine import VideoIOError, VideoUpscaler, load_model
    from .engine.video import segments

    descriptor = load_model(model, hints=hints)  # the join needs the scale and the writer's settings
    VideoUpscaler(descriptor, options)  # options the model cannot run (feedback without it) fail here, not on actors
    ray = connect(address)
    actors, gpus_per_actor, cpus = _placement(ray, actors, gpus_per_actor)
    video = segments.index(source)
    cuts = segments.scene_cuts(source, options.scene_cut)
    plan = segments.plan(video, actors * max(1, segments_per_actor), cuts=cuts)
    if not plan:
        raise VideoIOError(f"{source}: no video frames could be read")
    parts_folder = Path(destination).parent / f".tilewise-parts-{secrets.token_hex(6)}"
    parts_folder.mkdir(parents=True)
    parts = [str(parts_folder / f"{number:05d}.mkv") for number in range(len(plan))]
    pool = ActorPool(ray, model, hints, options, min(actors, len(plan)), gpus_per_actor, cpus)
    try:
        results = pool.run(
            [(str(source), segment, video, part) for segment, part in zip(plan, parts)],
            on_result,
            method="video_segment",
        )
        failed = [r.error for r in results if r.error]
        if failed:
            raise VideoIOError(failed[0])
        return segments.join(descriptor, source, parts, destination, options, codec=codec, crf=crf)
    finally:
        pool.shutdown()
        shutil.rmtree(parts_folder, ignore_errors=True)


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
    actors, gpus_per_actor, cpus = _placement(ray, actors, gpus_per_actor)
    started = time.time()
    pool = ActorPool(ray, model, hints, options, actors, gpus_per_actor, cpus)
    try:
        return pool.run([(str(s), str(d)) for s, d in jobs], on_result)
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
