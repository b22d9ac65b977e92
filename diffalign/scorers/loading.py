"""Where scorer weights come from: a local file or folder, or the Hugging Face Hub, with clear errors.

Weight files load with safetensors or ``torch.load(weights_only=True)``; nothing executes code
from a checkpoint and ``trust_remote_code`` is never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from diffalign.scorers.base import ScorerLoadError


def looks_local(source: str) -> bool:
    """A path-like source (exists, or starts with '.', '/' or '~') rather than a Hub id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def resolve_file(source: str, filename: str, what: str, option: str) -> Path:
    """A local path for ``filename``: ``source`` is that file, a folder holding it, or a Hub repo id.

    ``what`` names the weights in errors; ``option`` is the scorer option users set to point
    at a downloaded copy.
    """
    if looks_local(source):
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / filename
        if not path.is_file():
            raise ScorerLoadError(f"{what}: {path} does not exist. Set the scorer option {option}= to the "
                                  f"downloaded file (e.g. {filename}) or a folder that holds it.")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename))
    except Exception as error:  # offline, missing repo, auth: huggingface_hub raises many types
        raise ScorerLoadError(
            f"{what}: could not get {filename} from the Hub repo {source!r} ({type(error).__name__}: {error}). "
            f"Download it where you have network (`huggingface-cli download {source} {filename} --local-dir DIR`) "
            f"and set the scorer option {option}=DIR/{filename}.") from error


def from_pretrained(loader: Callable[..., Any], source: str, what: str, option: str, **kwargs) -> Any:
    """``loader(source)`` (a transformers ``from_pretrained``) with a clear error naming the option to set."""
    if looks_local(source) and not Path(source).expanduser().is_dir():
        raise ScorerLoadError(f"{what}: the folder {source} does not exist. Set the scorer option {option}= to a "
                              "folder saved with save_pretrained, or to a Hub id.")
    try:
        return loader(str(Path(source).expanduser()) if looks_local(source) else source, **kwargs)
    except (OSError, ValueError) as error:
        raise ScorerLoadError(
            f"{what}: could not load from {source!r} ({type(error).__name__}: {error}). Download it where you have "
            f"network (`huggingface-cli download {source} --local-dir DIR`) and set the scorer option {option}=DIR.") from error


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (weights_only); unwraps a 'state_dict' entry."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, pickle with code objects, wrong format
        raise ScorerLoadError(f"{what}: could not read {path} as a weights file ({type(error).__name__}: {error}). "
                              "Expected .safetensors or a torch state dict loadable with weights_only=True.") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScorerLoadError(f"{what}: {path} does not hold a state dict of tensors")
    return state


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise ScorerLoadError(f"{what}: {path} does not match the architecture: {'; '.join(parts)}. "
                              "Check that the checkpoint and the architecture option belong together.")
    module.load_state_dict(state, strict=True)
