"""The fused CPU window-attention kernel (`archs/window_kernel.py`): against float64 attention,
against PyTorch's SDPA inside ParagonSR2's attention, and its fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tilewise.archs import window_kernel
from tilewise.archs.paragonsr2 import WindowAttention


@pytest.fixture(scope="module")
def lib():
    loaded = window_kernel.load()
    assert loaded is not None, f"the kernel did not build here: {window_kernel.unavailable_reason()}"
    return loaded


def reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention in float64 from the same (possibly bf16) inputs."""
    windows, n, width = qkv.shape
    q, k, v = qkv.double().reshape(windows, n, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(windows, n, width // 3)


def sdpa(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    windows, n, width = qkv.shape
    q, k, v = qkv.reshape(windows, n, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(windows, n, width // 3)


def projection(windows: int, n: int, heads: int, head_dim: int, spread: float, seed: int) -> torch.Tensor:
    return torch.randn(windows, n, 3 * heads * head_dim, generator=torch.Generator().manual_seed(seed)) * spread


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("n, heads, windows", [(256, 4, 5), (64, 2, 3), (16, 1, 1), (1024, 1, 1)])
@pytest.mark.parametrize("spread", [1.0, 6.0])  # 6: scores in the hundreds, nearly one-hot weights
def test_fp32_is_about_as_close_to_float64_as_sdpa(lib, head_dim, n, heads, windows, spread):
    qkv = projection(windows, n, heads, head_dim, spread, seed=n + heads)
    exact = reference(qkv, heads)
    ours = window_kernel.attend(qkv, heads)
    assert ours is not None and ours.dtype == torch.float32 and ours.shape == exact.shape
    theirs = (sdpa(qkv, heads).double() - exact).abs().max().item()
    assert (ours.double() - exact).abs().max().item() <= max(4 * theirs, 1e-6 * exact.abs().max().item())


@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("spread", [1.0, 6.0])
def test_bf16_output_is_the_exact_result_rounded_once(lib, head_dim, spread):
    """bf16 inputs are widened exactly and accumulated in fp32, so the output is float64's
    result rounded to bf16 once: within a bf16 step (2^-8 relative; half a step, plus fp32
    accumulation that can cross a rounding boundary) plus fp32 noise on the values' scale."""
    qkv = projection(6, 256, 4, head_dim, spread, seed=7).bfloat16()
    exact = reference(qkv, 4)
    ours = window_kernel.attend(qkv, 4)
    assert ours is not None and ours.dtype == torch.bfloat16
    error = (ours.double() - exact).abs()
    values = qkv[..., 2 * 4 * head_dim :].double().abs().max()
    assert (error <= exact.abs() * 2.0**-8 + 1e-6 * values).all()
    assert error.max() <= (sdpa(qkv, 4).double() - exact).abs().max()


def test_threads_split_work_without_changing_a_bit(lib):
    qkv = projection(9, 256, 4, 16, 2.0, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = window_kernel.attend(qkv, 4)
        torch.set_num_threads(max(2, threads))
        several = window_kernel.attend(qkv, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)


def test_strided_projection_is_read_correctly(lib):
    wide = projection(4, 64, 2, 16, 1.0, seed=5)
    qkv = wide.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not qkv.is_contiguous()
    assert torch.equal(window_kernel.attend(qkv, 2), window_kernel.attend(wide, 2))


@pytest.mark.parametrize(
    "qkv, heads",
    [
        (torch.zeros(2, 256, 3 * 4 * 8), 4),  # 8-wide heads
        (torch.zeros(2, 20, 3 * 64), 4),  # 20 tokens: not a multiple of 16
        (torch.zeros(2, 256, 3 * 64, dtype=torch.float16), 4),
        (torch.zeros(2, 256, 3 * 64, dtype=torch.float64), 4),
        (torch.zeros(256, 3 * 64), 4),  # no window axis
        (torch.zeros(2, 256, 3 * 64 + 1), 4),  # not three equal parts
        (torch.zeros(0, 256, 3 * 64), 4),
        (torch.zeros(1, 4096 + 16, 3 * 64), 4),  # windows larger than 64 x 64
    ],
)
def test_shapes_it_does_not_take_are_left_to_sdpa(qkv, heads):
    assert window_kernel.attend(qkv, heads) is None


def test_autograd_is_left_to_sdpa():
    qkv = projection(1, 256, 4, 16, 1.0, seed=1).requires_grad_()
    assert window_kernel.attend(qkv, 4) is None


@pytest.mark.parametrize("shape", [(1, 37, 45), (2, 32, 48), (1, 9, 70)])
@pytest.mark.parametrize("shift", [0, 8])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 0.05)])
def test_paragonsr2_attention_with_the_kernel_matches_the_plain_form(lib, shape, shift, dtype, tolerance, monkeypatch):
    """ParagonSR2's photo/pro attention (64 channels, 4 heads, 16 x 16 windows) through the
    kernel against the plain pad/roll/SDPA form autograd runs, padding and wrap-around included."""
    calls = []
    attend = window_kernel.attend
    monkeypatch.setattr(window_kernel, "attend", lambda qkv, heads: calls.append(attend(qkv, heads)) or calls[-1])
    torch.manual_seed(shape[1] + shift)
    attn = WindowAttention(64, num_heads=4, window_size=16, shift_size=shift).eval().to(dtype)
    x = torch.randn(shape[0], shape[1], shape[2], 64).to(dtype)
    plain = attn(x)
    assert plain.requires_grad and not calls
    with torch.inference_mode():
        fast = attn(x)
    assert len(calls) == 1 and calls[0] is not None
    exact = WindowAttention(64, num_heads=4, window_size=16, shift_size=shift).double()
    exact.load_state_dict(attn.state_dict())
    truth = exact(x.double()).detach()
    assert (fast.double() - truth).abs().max().item() <= tolerance
    assert (fast.double() - truth).abs().max() <= 2 * (plain.double() - truth).abs().max() + 1e-6


def run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


FALLBACK = (
    "import logging, torch\n"
    "from tilewise.archs import window_kernel\n"
    "from tilewise.archs.paragonsr2 import WindowAttention\n"
    "logging.basicConfig(level=logging.WARNING)\n"
    "torch.manual_seed(0)\n"
    "attn = WindowAttention(64, 4, 16, 8).eval()\n"
    "x = torch.randn(1, 20, 40, 64)\n"
    "plain = attn(x)\n"
    "with torch.inference_mode():\n"
    "    fast = attn(x)\n"
    "assert window_kernel.load() is None\n"
    "assert torch.equal(fast, plain.detach())\n"  # SDPA on the same windows: the same bits
    "print('reason:', window_kernel.unavailable_reason())\n"
)


@pytest.mark.parametrize("env, reason", [
    ({"TILEWISE_CPU_KERNELS": "0"}, "TILEWISE_CPU_KERNELS=0"),
    ({"CXX": "/nonexistent/c++"}, "No such file"),
    ({"CXX": "false"}, "exit status 1"),
])  # fmt: skip
def test_without_the_kernel_attention_runs_on_sdpa(tmp_path: Path, env, reason):
    done = run_isolated(FALLBACK, TILEWISE_CACHE_DIR=str(tmp_path), **env)
    assert done.returncode == 0, done.stderr
    assert reason in done.stdout
    if "CXX" in env:
        assert "window-attention kernel is unavailable" in done.stderr
    assert not list(tmp_path.glob("window_attention-*.so"))  # nothing half-built left behind


def test_built_once_per_machine_and_reused(tmp_path: Path):
    code = "from tilewise.archs import window_kernel\nassert window_kernel.load() is not None\n"
    first = run_isolated(code, TILEWISE_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.glob("window_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    again = run_isolated(code, TILEWISE_CACHE_DIR=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("window_attention-*.so")] == [stamp]
