"""Fuzzing the loader with seeded mutations of real checkpoint files.

Each mutated file must either load or fail with a `TilewiseError` (a clear, file-naming message);
any other exception is a bug. CI runs seeds 0..TILEWISE_FUZZ_SEEDS (default 240); run more with
`TILEWISE_FUZZ_SEEDS=5000 pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from model_zoo import ZOO
from tilewise.engine import TilewiseError, load_model

SEEDS = int(os.environ.get("TILEWISE_FUZZ_SEEDS", "240"))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-originals")
    files = {
        "safetensors": ZOO["Compact"].save(folder / "c.safetensors", seed=0, scale=2),
        "pth": ZOO["Compact"].save(folder / "c.pth", seed=0, scale=2, wrapper="params_ema"),
        "legacy": folder / "legacy.pth",
    }
    torch.save(ZOO["Compact"].state_dict(seed=0, scale=2), files["legacy"], _use_new_zipfile_serialization=False)
    return {kind: path.read_bytes() for kind, path in files.items()}


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "byte", "truncate", "insert", "delete", "duplicate", "header", "zero"])
        if not data:
            break
        at = rng.randrange(len(data))
        if op == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif op == "byte":
            data[at] = rng.randrange(256)
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == "delete":
            del data[at : at + rng.randint(1, 64)]
        elif op == "duplicate":
            end = min(len(data), at + rng.randint(1, 256))
            data[at:at] = data[at:end]
        elif op == "header":  # the first bytes hold the safetensors header length / archive magic
            data[rng.randrange(min(16, len(data)))] = rng.randrange(256)
        else:
            end = min(len(data), at + rng.randint(1, 512))
            data[at:end] = bytes(end - at)
    return bytes(data)


@pytest.mark.parametrize("kind", ["safetensors", "pth", "legacy"])
def test_mutated_checkpoints_load_or_fail_clearly(tmp_path: Path, originals, kind):
    suffix = ".safetensors" if kind == "safetensors" else ".pth"
    outcomes = {"loaded": 0, "refused": 0}
    for seed in range(SEEDS // 3):
        rng = random.Random(f"{kind}-{seed}")
        path = tmp_path / f"fuzz_{seed}{suffix}"
        path.write_bytes(mutate(originals[kind], rng))
        try:
            descriptor = load_model(path, cache=None)
            descriptor.model(torch.rand(1, descriptor.input_channels, 4, 4))
            outcomes["loaded"] += 1
        except TilewiseError as error:
            assert str(error).startswith(path.name), f"seed {seed}: the message does not name the file: {error}"
            outcomes["refused"] += 1
        except Exception as error:  # pragma: no cover - this is the bug the test looks for
            pytest.fail(f"{kind} seed {seed}: {type(error).__name__}: {error}")
        path.unlink()
    assert outcomes["refused"] > 0  # the mutations do damage
