"""Pre-computed VAE latents and text embeddings on disk: encode once, train many steps.

The public Diffusion-DPO scripts run the VAE on both images of every pair at every step; with the
cache the training step only runs the UNet. Layout of one cache (a folder named by a key that
hashes the model, the data and the preprocessing, so a changed setting never reuses stale tensors)::

    <cache.dir>/<key>/manifest.json           settings, kind, item count, row keys, shard size, "complete"
    <cache.dir>/<key>/text.safetensors        prompt_embeds [U, L, D] (+ pooled [U, P] for SDXL) per unique caption
    <cache.dir>/<key>/shards/00000.safetensors one row per item, and caption_index [n]

Rows of a pair cache: latents_w, latents_l [n, 4, h, w], time_ids_w/_l [n, 6]. Rows of a ranked
cache (K images per prompt): latents [n, K, 4, h, w] (zeros where padded), time_ids [n, K, 6],
labels [n, K], mask [n, K] (bool). Each file is written to a temporary name and renamed, so an
interrupted build resumes by skipping the shards that exist. With several processes, shards are
split between them. Latents are the VAE posterior mean times the scaling factor (as in
:func:`diffalign.models.encode_images`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffalign.data.pairs import DataError
from diffalign.data.ranked import RankedDataset

from diffalign.models import DTYPES, Components, encode_images, encode_prompts

logger = logging.getLogger(__name__)

CACHE_VERSION = 2


def cache_settings(config, components: Components) -> dict:
    """Everything the cached tensors depend on; the cache key is a hash of this."""
    model, data = config.model, config.data
    return {
        "version": CACHE_VERSION,
        "model": model.pretrained, "revision": model.revision, "variant": model.variant, "vae": model.vae,
        "vae_dtype": model.vae_dtype, "mixed_precision": model.mixed_precision, "sdxl": components.is_sdxl,
        "data_format": data.format, "data_path": str(Path(data.path).resolve()) if Path(data.path).exists() else data.path,
        "data_fingerprint": data_fingerprint(data.path),
        "split": data.split, "max_pairs": data.max_pairs, "resolution": data.resolution,
        "center_crop": data.center_crop, "random_flip": data.random_flip, "dtype": config.cache.dtype,
        "shard_size": config.cache.shard_size, "latents": "posterior mean * scaling_factor",
    }


FINGERPRINT_CONTENT_LIMIT = 64 * 2**20  # local files up to this size are hashed by content, larger ones by size + mtime


def data_fingerprint(path: str) -> str | None:
    """What identifies the contents of a local data file or folder (None for Hub names): a content hash
    of files up to 64 MiB, size and modification time of larger ones, so rewritten data at the same
    path gets a new cache key."""
    root = Path(path)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else file.name}:{stat.st_size}:".encode())
        if stat.st_size <= FINGERPRINT_CONTENT_LIMIT:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def cache_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


PAIR_ROWS = ("latents_w", "latents_l", "time_ids_w", "time_ids_l")
RANKED_ROWS = ("latents", "time_ids", "labels", "mask")


def build_cache(dataset, components: Components, config, accelerator) -> "CachedDataset":
    """Encode ``dataset`` (a PreferencePairDataset or RankedDataset with deterministic preprocessing)
    into the cache folder for these settings, resuming a partial build, and return the dataset that
    reads it."""
    settings = cache_settings(config, components)
    folder = Path(config.cache.dir) / cache_key(settings)
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("complete"):
        cached_items = json.loads(manifest_path.read_text()).get("num_items")
        if cached_items != len(dataset):
            raise DataError(f"cache {folder} holds {cached_items} items but the data has {len(dataset)}; the data "
                            "changed in a way the cache key cannot see: delete that folder and run again")
        logger.info("using cache %s", folder)
        return CachedDataset(folder)
    ranked = isinstance(dataset, RankedDataset)
    unit = "record" if ranked else "pair"
    device, dtype = accelerator.device, DTYPES[config.cache.dtype]
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    components.vae.to(device)
    for encoder in components.text_encoders:
        encoder.to(device)
    captions = dataset.captions()
    unique = sorted(set(captions))
    caption_index = {caption: i for i, caption in enumerate(unique)}
    if accelerator.is_main_process and not (folder / "text.safetensors").is_file():
        _write_text(folder, components, unique, device, dtype, config.cache.batch_size)
    shard_size = config.cache.shard_size
    num_shards = (len(dataset) + shard_size - 1) // shard_size
    mine = [s for s in range(num_shards) if s % accelerator.num_processes == accelerator.process_index]
    todo = [s for s in mine if not (folder / "shards" / f"{s:05d}.safetensors").is_file()]
    if len(todo) < len(mine):
        logger.info("cache %s: resuming, %d of %d shards already written", folder, len(mine) - len(todo), len(mine))
    progress = tqdm(total=sum(min(shard_size, len(dataset) - s * shard_size) for s in todo),
                    desc="caching latents", unit=unit, disable=not accelerator.is_local_main_process)
    encode = _encode_groups if ranked else _encode_pairs
    for shard in todo:
        rows = range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        _write_shard(folder / "shards" / f"{shard:05d}.safetensors", dataset, rows, encode, components.vae,
                     caption_index, dtype, config.cache.batch_size, progress)
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json({"settings": settings, "kind": "ranked" if ranked else "pairs", "num_items": len(dataset),
                     "row_keys": list(RANKED_ROWS if ranked else PAIR_ROWS), "num_captions": len(unique),
                     "shard_size": shard_size, "complete": True}, manifest_path)
    accelerator.wait_for_everyone()
    return CachedDataset(folder)


def _write_text(folder: Path, components: Components, captions: list[str], device, dtype, batch_size: int) -> None:
    embeds, pooled = [], []
    for start in tqdm(range(0, len(captions), batch_size), desc="caching text", unit="batch"):
        out = encode_prompts(components, captions[start:start + batch_size], device)
        embeds.append(out.prompt_embeds.to("cpu", dtype))
        if out.pooled is not None:
            pooled.append(out.pooled.to("cpu", dtype))
    tensors = {"prompt_embeds": torch.cat(embeds)}
    if pooled:
        tensors["pooled"] = torch.cat(pooled)
    _atomic_save(tensors, folder / "text.safetensors")
    _write_json({"captions": captions}, folder / "captions.json")


def _encode_pairs(items: list[dict], vae, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cache rows of pair items: both images through the VAE in one batch."""
    pixels = torch.cat([torch.stack([it["pixel_values_w"] for it in items]),
                        torch.stack([it["pixel_values_l"] for it in items])])
    latents_w, latents_l = encode_images(vae, pixels).cpu().chunk(2)
    return {"latents_w": latents_w.to(dtype), "latents_l": latents_l.to(dtype),
            "time_ids_w": torch.stack([it["time_ids_w"] for it in items]).float(),
            "time_ids_l": torch.stack([it["time_ids_l"] for it in items]).float()}


def _encode_groups(items: list[dict], vae, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cache rows of ranked items: the valid images through the VAE, padding left as zero latents."""
    mask = torch.stack([it["mask"] for it in items])
    encoded = encode_images(vae, torch.stack([it["pixel_values"] for it in items])[mask]).cpu()
    latents = encoded.new_zeros(*mask.shape, *encoded.shape[1:])
    latents[mask] = encoded
    return {"latents": latents.to(dtype), "time_ids": torch.stack([it["time_ids"] for it in items]).float(),
            "labels": torch.stack([it["labels"] for it in items]).float(), "mask": mask}


def _write_shard(path: Path, dataset, rows: range, encode, vae, caption_index: dict, dtype: torch.dtype,
                 batch_size: int, progress) -> None:
    columns: dict[str, list[torch.Tensor]] = {}
    for start in range(rows.start, rows.stop, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, rows.stop))]
        encoded = encode(items, vae, dtype)
        encoded["caption_index"] = torch.tensor([caption_index[it["caption"]] for it in items])
        for key, value in encoded.items():
            columns.setdefault(key, []).append(value)
        progress.update(len(items))
    _atomic_save({k: torch.cat(v) for k, v in columns.items()}, path)


class CachedDataset(torch.utils.data.Dataset):
    """Reads a complete cache lazily (memory-mapped slices), one pair or ranked record per item.

    Items: the cache's row keys (pairs: ``latents_w``, ``latents_l`` [4, h, w], ``time_ids_w``,
    ``time_ids_l`` [6]; ranked: ``latents`` [K, 4, h, w], ``time_ids`` [K, 6], ``labels`` [K], ``mask``
    [K]), ``prompt_embeds`` [L, D], ``pooled`` [P] (SDXL only) and ``index`` (row). Tensors keep the
    cache's storage dtype.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        if not manifest.get("complete"):
            raise RuntimeError(f"cache {self.folder} is incomplete; rebuild it (training does so automatically).")
        self.num_items, self.shard_size = manifest["num_items"], manifest["shard_size"]
        self.row_keys, self.kind = tuple(manifest["row_keys"]), manifest["kind"]
        self.settings = manifest["settings"]
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return self.num_items

    def _handle(self, name: str):
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.folder / name), framework="pt")
        return self._handles[name]

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _handles={})

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        shard, row = divmod(index, self.shard_size)
        handle = self._handle(f"shards/{shard:05d}.safetensors")
        item = {key: handle.get_slice(key)[row:row + 1][0] for key in self.row_keys}
        caption = int(handle.get_slice("caption_index")[row:row + 1][0])
        text = self._handle("text.safetensors")
        item["prompt_embeds"] = text.get_slice("prompt_embeds")[caption:caption + 1][0]
        if "pooled" in text.keys():
            item["pooled"] = text.get_slice("pooled")[caption:caption + 1][0]
        item["index"] = index
        return item
