"""Loading and detection: real checkpoint files of spandrel's and our architectures, every wrapper,
a private registry, the cache, and clear errors for what cannot be loaded."""

from __future__ import annotations

import os
import sys
import types

import pytest
import spandrel
import torch
from model_zoo import PREFIX_WRAPPERS, WRAPPERS, ZOO
from safetensors.torch import save_file
from tilewise.engine import HintRequiredError, LoadHints, ModelFileError, UnknownArchitectureError, load_model, registry
from tilewise.engine.model import loading


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_detects_architecture_and_scale(tmp_path, name, suffix):
    entry = ZOO[name]
    path = entry.save(tmp_path / f"model{suffix}", seed=1)
    descriptor = load_model(path, cache=None)
    assert descriptor.architecture.id == entry.arch_id
    assert descriptor.scale == entry.expected_scale()
    assert (descriptor.input_channels, descriptor.output_channels) == (entry.in_channels, entry.out_channels)
    # the weights are the file's, not a fresh initialisation
    reference = entry.state_dict(seed=1)
    loaded = descriptor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items() if k in loaded)


@pytest.mark.parametrize("name", ["Compact", "ESRGAN"])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_every_wrapper_loads_in_pth(tmp_path, name, wrapper):
    entry = ZOO[name]
    descriptor = load_model(entry.save(tmp_path / "wrapped.pth", seed=2, wrapper=wrapper), cache=None)
    assert descriptor.architecture.id == entry.arch_id
    plain = entry.state_dict(seed=2)
    assert all(
        torch.equal(descriptor.model.state_dict()[k], v) for k, v in plain.items() if k in descriptor.model.state_dict()
    )


@pytest.mark.parametrize("wrapper", list(PREFIX_WRAPPERS))
def test_prefix_wrappers_load_in_safetensors(tmp_path, wrapper):
    path = ZOO["Compact"].save(tmp_path / "wrapped.safetensors", seed=3, wrapper=wrapper)
    assert load_model(path, cache=None).architecture.id == "Compact"


@pytest.mark.parametrize("scale", [2, 3])
def test_scale_variants(tmp_path, scale):
    assert load_model(ZOO["Compact"].save(tmp_path / "c.safetensors", seed=0, scale=scale), cache=None).scale == scale


def test_registry_is_private():
    ours = registry()
    for arch_id in ("MagicKernelSharp2021", "EDSR", "RDN", "ESPCN", "SRCNN", "FSRCNN"):
        assert arch_id in ours
        assert arch_id not in spandrel.MAIN_REGISTRY
    assert "ESRGAN" in ours


def test_extra_arches_are_used_when_installed(monkeypatch):
    class ExtraArch(spandrel.Architecture):
        def __init__(self):
            super().__init__(id="ExtraTestArch", detect=lambda sd: "extra.only" in sd)

        def load(self, state_dict):
            raise NotImplementedError

    extra = spandrel.ArchRegistry()
    extra.add(spandrel.ArchSupport.from_architecture(ExtraArch()))
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", types.SimpleNamespace(EXTRA_REGISTRY=extra))
    monkeypatch.setattr(loading, "_registry", None)
    assert "ExtraTestArch" in registry()
    monkeypatch.setattr(loading, "_registry", None)


def test_cache_reuses_and_notices_changes(tmp_path):
    cache = loading.ModelCache()
    path = ZOO["Compact"].save(tmp_path / "m.safetensors", seed=0)
    first = load_model(path, cache=cache)
    assert load_model(path, cache=cache) is first
    assert load_model(path, cache=cache, dtype=torch.bfloat16) is not first
    ZOO["Compact"].save(path, seed=1)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    second = load_model(path, cache=cache)
    assert second is not first
    assert not torch.equal(next(second.model.parameters()), next(first.model.parameters()))


def test_cache_is_bounded():
    cache = loading.ModelCache(capacity=2)
    for scale in (2, 3, 4):
        load_model(f"builtin:magic-kernel-sharp-{scale}x", cache=cache)
    assert len(cache) == 2


def test_unknown_architecture_lists_top_level_keys(tmp_path):
    weights = {f"layer{i:02d}.block.weight": torch.zeros(2) for i in range(14)}
    path = tmp_path / "mystery.safetensors"
    save_file(weights, path)
    with pytest.raises(UnknownArchitectureError) as error:
        load_model(path, cache=None)
    message = str(error.value)
    assert message.startswith("mystery.safetensors: has an unknown architecture")
    assert "layer00, layer01" in message and "layer09" in message and "layer10" not in message


@pytest.mark.parametrize(
    "keys,what",
    [
        (["encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight"], "VAE"),
        (["text_model.embeddings.token_embedding.weight"], "text encoder"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "diffusion model"),
    ],
)
def test_other_model_kinds_are_named(tmp_path, keys, what):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(1) for k in keys}, path)
    with pytest.raises(UnknownArchitectureError, match=what):
        load_model(path, cache=None)


def test_optimizer_state_is_named(tmp_path):
    path = tmp_path / "optim.pth"
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}, path)
    with pytest.raises(ModelFileError, match="optimizer state"):
        load_model(path, cache=None)


def test_weights_that_do_not_fit_a_detected_architecture(tmp_path):
    weights = ZOO["Compact"].state_dict(seed=0)
    weights["body.0.weight"] = weights["body.0.weight"][
        :, :2
    ].contiguous()  # 2 input channels but a 3-channel bias path
    weights["body.2.weight"] = torch.zeros(5, 5)
    path = tmp_path / "broken.safetensors"
    save_file(weights, path)
    with pytest.raises(ModelFileError, match="broken.safetensors: looks like Compact|broken.safetensors"):
        load_model(path, cache=None)


def _srcnn_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "conv1.weight": torch.randn(64, 1, 9, 9) * 0.01,
        "conv1.bias": torch.zeros(64),
        "conv2.weight": torch.randn(32, 64, 5, 5) * 0.01,
        "conv2.bias": torch.zeros(32),
        "conv3.weight": torch.randn(1, 32, 5, 5) * 0.01,
        "conv3.bias": torch.zeros(1),
    }


def test_scale_hint_needed_and_given(tmp_path):
    plain = tmp_path / "srcnn.pth"
    torch.save(_srcnn_weights(), plain)
    with pytest.raises(HintRequiredError, match=r"srcnn.pth: .*scale"):
        load_model(plain, cache=None)
    named = tmp_path / "srcnn_x3.pth"
    torch.save(_srcnn_weights(), named)
    assert load_model(named, cache=None).scale == 3
    assert load_model(plain, hints=LoadHints(scale=4), cache=None).scale == 4
