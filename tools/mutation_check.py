"""Proves the test suite bites: breaks the engine in nine known ways, one at a time, and runs
the tests that should notice. Each mutation must make at least one test fail.

    python tools/mutation_check.py [NAME ...]

Each mutation is an edit of one or two lines of a source file, reverted afterwards (the file is restored
from memory even if the run is interrupted). Prints one line per mutation: caught or MISSED,
and the first failing test.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    old2: str = ""  # a second line of the same file, when one edit is not the whole mutation
    new2: str = ""


MUTATIONS = (
    Mutation(
        "tile crop offsets off by one",
        "engine/run/runner.py",
        "output[:, core.y0 : core.y1, core.x0 : core.x1] = result[:, inner.y0 : inner.y1, inner.x0 : inner.x1]",
        "output[:, core.y0 : core.y1, core.x0 : core.x1] = result[:, max(inner.y0 - 1, 0) : max(inner.y0 - 1, 0) "
        "+ inner.y1 - inner.y0, inner.x0 : inner.x1]",
        ("tests/test_runner.py", "tests/test_seamless.py"),
    ),
    Mutation(
        "receptive radius halved",
        "engine/plan/planner.py",
        "return model_context(descriptor, forward32, device, align, reach).pad",
        "return model_context(descriptor, forward32, device, align, reach).pad // 2",
        ("tests/test_seamless.py",),
    ),
    Mutation(
        "fp32 fallback disabled",
        "engine/run/runner.py",
        "if item.overflowed():",
        "if False and item.overflowed():",
        ("tests/test_runner.py", "tests/test_precision.py"),
    ),
    Mutation(
        "alpha dropped",
        "engine/image/pipeline.py",
        'if alpha is None or options.alpha == "discard":',
        "if True:",
        ("tests/test_pipeline.py",),
    ),
    Mutation(
        "YCbCr coefficients swapped",
        "engine/image/colour.py",
        "cb = 0.5 + (-0.168736 * r - 0.331264 * g + 0.5 * b)",
        "cb = 0.5 + (-0.331264 * r - 0.168736 * g + 0.5 * b)",
        ("tests/test_classic_archs.py", "tests/test_pipeline.py"),
    ),
    Mutation(
        "ParagonSR2 window shift removed",
        "archs/paragonsr2.py",
        "shift = window_size // 2 if index % 2 else 0",
        "shift = 0",
        ("tests/test_paragonsr2.py",),
    ),
    Mutation(
        "scene-cut reset disabled",
        "engine/video/temporal.py",
        "return previous.shape != current.shape or (current - previous).abs().mean().item() > threshold",
        "return False",
        ("tests/test_video.py",),
    ),
    Mutation(  # the scan checks a global where it is named and again where it is called: widen both
        "pickle allow-list widened to builtins",
        "engine/model/pickle_scan.py",
        "if full not in allowed and full not in _ELEMENT_SIZES and full not in dtypes:",
        'if full not in allowed and full not in _ELEMENT_SIZES and full not in dtypes and module != "builtins":',
        ("tests/test_hostile.py",),
        "    raise PickleRefused(f\"calls '{printable(name)}', which weights never need\")",
        '    return _Node("object", args.items)',
    ),
    Mutation(
        "tileable edges clamped instead of wrapped",
        "engine/image/pipeline.py",
        "rows = torch.arange(-margin, height + margin, device=image.device) % height",
        "rows = torch.arange(-margin, height + margin, device=image.device).clamp(0, height - 1)",
        ("tests/test_pipeline.py", "tests/test_seamless.py"),
    ),
)


def run(mutation: Mutation) -> tuple[bool, str]:
    path = ROOT / mutation.file
    original = path.read_text()
    edits = [(mutation.old, mutation.new)] + ([(mutation.old2, mutation.new2)] if mutation.old2 else [])
    mutated = original
    for old, new in edits:
        if mutated.count(old) != 1:
            raise SystemExit(
                f"{mutation.name}: the line to mutate is not found once in {mutation.file}; update this tool"
            )
        mutated = mutated.replace(old, new)
    try:
        path.write_text(mutated)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return done.returncode != 0, failed[0] if failed else ""


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    missed = 0
    for mutation in chosen:
        caught, first = run(mutation)
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {mutation.name:<40} {first}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
