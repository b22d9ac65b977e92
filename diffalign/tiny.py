"""Tiny pipelines with seeded random weights, built from the config folders in assets/models/.

Used by the demo, the tests and CPU benchmarks: the result is a complete diffusers pipeline folder
saved with ``save_pretrained`` (safetensors), so it loads through the same ``from_pretrained``
code path as a real SD or SDXL checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffalign.paths import asset

_MODELS = {
    "UNet2DConditionModel": lambda folder: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder)),
    "AutoencoderKL": lambda folder: AutoencoderKL.from_config(AutoencoderKL.load_config(folder)),
    "CLIPTextModel": lambda folder: CLIPTextModel(CLIPTextConfig.from_pretrained(folder)),
    "CLIPTextModelWithProjection": lambda folder: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder)),
}


def pipeline_config_dir(name: str = "tiny-sd") -> Path:
    """Config folder of a shipped pipeline: 'tiny-sd', 'tiny-sdxl', 'sd15-arch' or 'sdxl-arch'."""
    return asset("models", name)


def build_random_pipeline(config_dir: str | Path, out_dir: str | Path, seed: int = 0,
                          dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Instantiate every model of a pipeline config folder with seeded random weights and save it.

    Tokenizer and scheduler folders are copied; models are saved with ``save_pretrained`` in
    ``dtype`` (initialised on ``device``: 'cuda' makes full-size SDXL quick to build).
    Returns ``out_dir``, loadable with ``DiffusionPipeline.from_pretrained(out_dir)``.
    """
    config_dir, out_dir = Path(config_dir), Path(out_dir)
    index = json.loads((config_dir / "model_index.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, spec in sorted(index.items()):
        if not isinstance(spec, list) or spec[1] is None:
            continue
        class_name = spec[1]
        if class_name in _MODELS:
            with torch.device(device):
                model = _MODELS[class_name](config_dir / name)
            model.to(dtype=dtype).save_pretrained(out_dir / name, safe_serialization=True)
            del model
        else:
            shutil.copytree(config_dir / name, out_dir / name, dirs_exist_ok=True)
    shutil.copy(config_dir / "model_index.json", out_dir / "model_index.json")
    return out_dir


@contextmanager
def replacing_folder(out: str | Path):
    """Write a folder as a whole: yields an empty temporary sibling of ``out`` that replaces ``out`` by a
    rename when the block succeeds; on an error ``out`` is left as it was."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def write_word_tokenizer(folder: str | Path, words: list[str] | tuple[str, ...], max_length: int = 32):
    """A CLIP BPE tokenizer whose vocabulary holds ``words`` as single tokens, written to ``folder``.

    The base vocabulary is printable ASCII (with and without the ``</w>`` word-end mark), so any text
    tokenizes; merges are added, one at a time, until every word of ``words`` is one token. Files are
    the standard ``vocab.json`` / ``merges.txt`` / ``tokenizer_config.json``, loaded by
    ``CLIPTokenizer.from_pretrained(folder)`` (returned). Deterministic for a given word list.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(code) for code in range(33, 127)]
    vocab = {token: i for i, token in enumerate(chars + [char + "</w>" for char in chars])}
    merges: list[tuple[str, str]] = []
    for _ in range(sum(len(word) for word in words) + 1):
        full = {**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
        (folder / "vocab.json").write_text(json.dumps(full))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        split = next((pieces for pieces in map(tokenizer.tokenize, words) if len(pieces) > 1), None)
        if split is None:
            return tokenizer
        merges.append((split[0], split[1]))
        vocab.setdefault(split[0] + split[1], len(vocab))
    raise RuntimeError("BPE merges did not converge")  # each merge shortens a word, so this is unreachable


# Scorers ------------------------------------------------------------------------------------------

_SCORER_ARCHS = {  # registered scorer -> (tiny architecture, real-size architecture)
    "pickscore": ("tiny-clip", "clip-vit-h14-arch"),
    "clipscore": ("tiny-clip", "clip-vit-b32-arch"),
    "clipscore-l14": ("tiny-clip", "clip-vit-l14-arch"),
    "aesthetic": ("tiny-clip", "clip-vit-l14-arch"),
    "hpsv2": ("tiny-open-clip.json", "ViT-H-14"),
    "hpsv2.1": ("tiny-open-clip.json", "ViT-H-14"),
}


def build_random_scorer(name: str, out_dir: str | Path, seed: int = 0, full_size: bool = False) -> str:
    """Seeded random weights for the registered scorer ``name``, saved as its real loader reads them.

    Tiny architectures by default (tests, CPU demo); ``full_size`` uses the published architecture
    (benchmarks). Returns a spec for :func:`diffalign.scorers.get_scorer` that loads these weights,
    e.g. ``"hpsv2.1:checkpoint=<out>/HPS_v2.1_compressed.pt,architecture=<json>"``. Weight-free
    scorers (JPEG) return their plain name.
    """
    from transformers import CLIPConfig, CLIPModel

    if name not in _SCORER_ARCHS:
        return name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    architecture = _SCORER_ARCHS[name][int(full_size)]
    torch.manual_seed(seed)
    if name.startswith("hpsv2"):
        from diffalign.scorers.hps import HPS_FILES, build_open_clip

        arch = str(asset("models", "scorers", architecture)) if architecture.endswith(".json") else architecture
        model, _ = build_open_clip(arch)
        checkpoint = out_dir / HPS_FILES[name]
        torch.save({"state_dict": model.state_dict()}, checkpoint)
        return f"{name}:checkpoint={checkpoint},architecture={arch}"
    config_dir = asset("models", "scorers", architecture)
    clip_dir = out_dir / architecture
    CLIPModel(CLIPConfig.from_pretrained(config_dir)).save_pretrained(clip_dir, safe_serialization=True)
    for file in config_dir.iterdir():
        if file.name != "config.json":
            shutil.copy(file, clip_dir / file.name)
    if name == "aesthetic":
        from safetensors.torch import save_file

        from diffalign.scorers.clip import AestheticHead

        head = out_dir / "aesthetic-head.safetensors"
        save_file(AestheticHead(CLIPConfig.from_pretrained(config_dir).projection_dim).state_dict(), str(head))
        return f"aesthetic:clip={clip_dir},head={head}"
    return f"{name}:model={clip_dir}"
