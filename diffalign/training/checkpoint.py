"""Atomic, resumable checkpoints on top of ``accelerator.save_state``.

A checkpoint folder ``<output_dir>/checkpoints/step-00000500`` holds accelerate's optimizer,
scheduler and RNG states, ``trainable.safetensors`` (only the trainable parameters: the LoRA
weights, or the whole UNet for a full fine-tune) and ``trainer_state.json`` (optimizer step and
the noise generator state). It is written to a ``.tmp-`` folder and renamed into place, so a run
killed mid-save never leaves a half-written checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, detached, contiguous, on CPU."""
    return {name: param.detach().cpu().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Load ``trainable.safetensors`` into ``model``; every trainable parameter must be present."""
    state = load_file(str(path))
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = expected - state.keys(), state.keys() - {n for n, _ in model.named_parameters()}
    if missing or unexpected:
        raise RuntimeError(f"{path} does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]} (was it saved with another LoRA or model config?)")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in state.items():
            params[name].copy_(tensor)


class CheckpointManager:
    """Saves, lists, prunes and resolves checkpoints under ``<output_dir>/checkpoints``."""

    def __init__(self, output_dir: str | Path, keep_last: int):
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file())

    def resolve(self, resume_from: str | None) -> Path | None:
        """'latest' -> newest checkpoint (None when there is none); a path -> that checkpoint."""
        if resume_from is None:
            return None
        if resume_from == "latest":
            found = self.checkpoints()
            return found[-1] if found else None
        path = Path(resume_from)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"checkpoint.resume_from={resume_from}: no {STATE_FILE} there, not a checkpoint.")
        return path

    def save(self, accelerator, step: int, state: dict, files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Write checkpoint ``step`` atomically on all processes; prune to ``keep_last``. ``files``: extra
        safetensors files (name -> tensors) written by the main process into the same folder."""
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            for name, tensors in (files or {}).items():
                save_file(tensors, str(tmp / name))
            (tmp / STATE_FILE).write_text(json.dumps(dict(state, global_step=step), indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    @staticmethod
    def read_state(path: Path) -> dict:
        return json.loads((path / STATE_FILE).read_text())


def generator_state(generator: torch.Generator) -> list[int]:
    """JSON-serialisable state of a CPU torch.Generator."""
    return generator.get_state().tolist()


def set_generator_state(generator: torch.Generator, state: list[int]) -> None:
    generator.set_state(torch.tensor(state, dtype=torch.uint8))


def register_trainable_hooks(accelerator, model_getter) -> None:
    """Make ``save_state``/``load_state`` store only trainable parameters of the prepared UNet."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_file(trainable_state_dict(model_getter()), os.path.join(output_dir, TRAINABLE_FILE))
        weights.clear()

    def load_hook(models, input_dir):
        load_trainable(model_getter(), Path(input_dir) / TRAINABLE_FILE)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
