"""Model layer: real loading path, clear errors, attention backend, packaging."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from diffalign.config import LoraConfig, ModelConfig
from diffalign.models import (ModelLoadError, Reference, add_lora, encode_prompts, load_components,
                              resolve_attention_backend, set_attention_backend)


def test_load_components_sd_and_sdxl(tiny_sd, tiny_sdxl):
    sd = load_components(ModelConfig(pretrained=str(tiny_sd)))
    assert not sd.is_sdxl and len(sd.text_encoders) == 1 and sd.vae_scale_factor == 8
    sdxl = load_components(ModelConfig(pretrained=str(tiny_sdxl), vae=str(tiny_sd / "vae")))
    assert sdxl.is_sdxl and len(sdxl.text_encoders) == 2
    embeds = encode_prompts(sdxl, ["a red circle", "a blue square"], torch.device("cpu"))
    assert embeds.prompt_embeds.shape == (2, 77, 64) and embeds.pooled.shape == (2, 32)


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"the local folder .*nothing-here/unet does not exist"):
        load_components(ModelConfig(pretrained=str(tmp_path / "nothing-here")))


def test_attention_backend_auto_falls_back_to_sdpa_and_xformers_refuses_on_cpu(tiny_sd):
    cpu = torch.device("cpu")
    assert resolve_attention_backend("auto", cpu) == "sdpa"
    assert resolve_attention_backend("sdpa", cpu) == "sdpa"
    with pytest.raises(RuntimeError, match="xformers was requested but xformers needs a CUDA device"):
        resolve_attention_backend("xformers", cpu)
    unet = load_components(ModelConfig(pretrained=str(tiny_sd))).unet
    set_attention_backend(unet, "sdpa")
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_lora_reference_disables_adapters_only_inside_the_block(tiny_sd):
    unet = load_components(ModelConfig(pretrained=str(tiny_sd))).unet.requires_grad_(False)
    params = add_lora(unet, LoraConfig(rank=2))
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32))
    reference = Reference(unet, use_lora=True, weight_dtype=torch.float32)
    with torch.no_grad():
        policy = unet(*inputs).sample
        with reference.active() as base:
            disabled = base(*inputs).sample
        again = unet(*inputs).sample
    assert not torch.allclose(policy, disabled)
    assert torch.equal(policy, again)


def test_bad_lora_target_modules_error(tiny_sd):
    unet = load_components(ModelConfig(pretrained=str(tiny_sd))).unet
    with pytest.raises(ValueError, match="lora.target_modules"):
        add_lora(unet, LoraConfig(target_modules=["no_such_layer"]))


def test_pipelines_install_as_diffalign_pipelines_only(tmp_path):
    import diffalign.pipelines

    assert diffalign.pipelines.__file__.endswith("pipelines/__init__.py")
    code = "import importlib.util; print(importlib.util.find_spec('pipelines') is None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_every_subpackage_is_packaged():
    """A package missing from pyproject's list works in an editable install but not from a wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "diffalign").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_lora_reference_is_exact_on_gpu(tmp_path, tiny_sdxl):
    from conftest import tiny_config
    from test_training import fixed_batch, loss_on, make_trainer

    trainer = make_trainer(tiny_config(tmp_path, tiny_sdxl, "model.mixed_precision=bf16"))
    loss, metrics = loss_on(trainer, fixed_batch(trainer))
    assert metrics["implicit_reward"].item() == 0.0
    assert trainer.attention == ("xformers" if importlib.util.find_spec("xformers") else "sdpa")
