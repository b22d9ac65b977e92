"""People label stored rollouts for D3PO's human mode: sampling, a local labeling page, labels on disk.

A label folder (``diffalign label sample``) holds::

    settings.json                 model, sampling settings, K
    prompts.jsonl                 {"prompt_id": "00003", "prompt": "...", "images": ["images/00003_0.png", ...]}
    rollouts/<prompt_id>.safetensors   the K trajectories of the prompt (one shared initial noise)
    images/<prompt_id>_<k>.png
    labels.jsonl                  written by the labeling page, one line per save

A label line is ``{"annotator": "ana", "prompt_id": "00003", "ranks": [1, 3, 2, null], "bad": [false,
false, false, true], "scores": [4, 2, 3, -1], "time": 1763800000.0}``: ``ranks`` 1 = best (ties
allowed), ``bad`` marks distorted images, and the training score of image i is ``K + 1 - rank_i``,
or -1 when marked bad (D3PO's convention for distorted images). The latest line of each
(annotator, prompt) counts; several annotators' scores are averaged per image, and training uses
every pair whose averaged scores differ by more than ``d3po.margin``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffalign.data.pairs import DataError
from diffalign.jsonl import jsonl_rows
from diffalign.sampling import Trajectory

LABELS_FILE = "labels.jsonl"


# Sampling ------------------------------------------------------------------------------------------

def sample_rollouts(config, out: str | Path, limit: int | None = None, device: str | None = None) -> Path:
    """Roll out ``d3po.images_per_prompt`` trajectories per prompt of ``prompts.train`` (first ``limit``)
    with the base model and one shared initial noise per prompt; resumable (existing prompts are kept)."""
    from tqdm.auto import tqdm

    from diffalign.evaluation.generate import write_text_atomic
    from diffalign.evaluation.prompts import load_prompt_set
    from diffalign.models import load_components
    from diffalign.training.online import build_trajectory_pipeline

    out = Path(out)
    (out / "rollouts").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    sampling, k = config.sampling, config.d3po.images_per_prompt
    prompts = load_prompt_set(config.prompts.train).subset(limit)
    components = load_components(config.model)
    pipeline = build_trajectory_pipeline(components, config.model.pretrained)
    pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {"model": config.model.pretrained, "images_per_prompt": k, "num_inference_steps": sampling.num_inference_steps,
                "guidance_scale": sampling.guidance_scale, "eta": sampling.eta, "height": sampling.height,
                "width": sampling.width, "seed": config.train.seed, "prompts": config.prompts.train}
    write_text_atomic(out / "settings.json", json.dumps(settings, indent=2))
    lines = []
    for index, record in enumerate(tqdm(prompts.records, desc="rollouts for labeling", unit="prompt")):
        prompt_id = f"{index:05d}"
        images = [f"images/{prompt_id}_{i}.png" for i in range(k)]
        lines.append(json.dumps({"prompt_id": prompt_id, "prompt": record.text, "images": images}))
        target = out / "rollouts" / f"{prompt_id}.safetensors"
        if target.is_file():
            continue
        generator = torch.Generator().manual_seed(config.train.seed * 1_000_003 + index)
        height, width = pipeline._size(sampling.height, sampling.width)
        noise = pipeline.initial_latents(1, height, width, generator).repeat(k, 1, 1, 1)
        result = pipeline.rollout([record.text] * k, sampling.num_inference_steps, sampling.guidance_scale,
                                  sampling.eta, generator, noise, height=height, width=width, progress=False)
        for image, name in zip(result.images, images):
            image.save(out / name)
        tensors, metadata = result.trajectory.to_tensors()
        save_file(tensors, str(out / "rollouts" / f".tmp-{prompt_id}.safetensors"),
                  metadata={"trajectory": json.dumps(metadata)})
        os.replace(out / "rollouts" / f".tmp-{prompt_id}.safetensors", target)
    write_text_atomic(out / "prompts.jsonl", "\n".join(lines) + "\n")
    return out


# Labels ----------------------------------------------------------------------------------------------

def read_prompts(folder: str | Path) -> dict[str, dict]:
    """prompt_id -> {"prompt", "images"} of a label folder."""
    path = Path(folder) / "prompts.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; make the folder with `diffalign label sample`.")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["prompt_id"]: row for row in rows}


def label_scores(ranks: list, bad: list[bool]) -> list[int]:
    """Training scores of one label: K + 1 - rank, or -1 for an image marked bad."""
    k = len(ranks)
    return [-1 if flag else k + 1 - int(rank) for rank, flag in zip(ranks, bad)]


def check_label(row: dict, prompts: dict[str, dict], where: str) -> dict:
    """Validate one label (from the page or labels.jsonl) against the folder's prompts; returns it with scores."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a label must be a JSON object, got {type(row).__name__}.")
    annotator, prompt_id = row.get("annotator"), row.get("prompt_id")
    if not isinstance(annotator, str) or not annotator.strip():
        raise DataError(f"{where}: 'annotator' must be a non-empty name, got {annotator!r}.")
    if prompt_id not in prompts:
        raise DataError(f"{where}: unknown prompt_id {prompt_id!r}; this folder has {len(prompts)} prompts "
                        f"({', '.join(list(prompts)[:3])}, ...).")
    k = len(prompts[prompt_id]["images"])
    ranks, bad = row.get("ranks"), row.get("bad")
    if not isinstance(ranks, list) or not isinstance(bad, list) or len(ranks) != k or len(bad) != k:
        raise DataError(f"{where}: prompt {prompt_id} has {k} images: 'ranks' and 'bad' must be lists of {k}.")
    for rank, flag in zip(ranks, bad):
        if not isinstance(flag, bool):
            raise DataError(f"{where}: 'bad' must hold true/false, got {flag!r}.")
        if not flag and not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= k):
            raise DataError(f"{where}: every image not marked bad needs a rank in 1..{k}, got {rank!r}.")
    return {"annotator": annotator.strip(), "prompt_id": prompt_id, "ranks": ranks, "bad": bad,
            "scores": label_scores([r if r is not None else k for r in ranks], bad),
            "time": float(row.get("time", time.time()))}


def read_labels(folder: str | Path) -> list[dict]:
    """Every label line of ``labels.jsonl``, validated (file:line in errors); the latest per annotator and prompt."""
    folder = Path(folder)
    prompts, path = read_prompts(folder), folder / LABELS_FILE
    if not path.is_file():
        raise DataError(f"{path}: no labels yet; label the images with `diffalign label serve {folder}`.")
    latest: dict[tuple[str, str], dict] = {}
    for where, row in jsonl_rows(path, DataError):
        label = check_label(row, prompts, where)
        latest[(label["annotator"], label["prompt_id"])] = label
    return list(latest.values())


def averaged_scores(labels: list[dict]) -> dict[str, list[float]]:
    """prompt_id -> per-image score averaged over the annotators who labelled it."""
    sums: dict[str, list[list[float]]] = {}
    for label in labels:
        sums.setdefault(label["prompt_id"], []).append([float(s) for s in label["scores"]])
    return {prompt_id: torch.tensor(rows).mean(dim=0).tolist() for prompt_id, rows in sums.items()}


class LabelledRollouts:
    """The labelled prompts of a label folder: stored trajectories and the pairs of their averaged scores."""

    def __init__(self, folder: str | Path, margin: float = 0.0):
        self.folder, self.margin = Path(folder), margin
        self.scores = averaged_scores(read_labels(self.folder))
        self.prompt_ids = sorted(self.scores)
        missing = [p for p in self.prompt_ids if not (self.folder / "rollouts" / f"{p}.safetensors").is_file()]
        if missing:
            raise DataError(f"{self.folder}: labels for prompts without stored rollouts: {missing[:5]}")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def load(self, prompt_id: str) -> Trajectory:
        path = self.folder / "rollouts" / f"{prompt_id}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads(handle.metadata()["trajectory"])
        return Trajectory.from_tensors(load_file(str(path)), metadata)

    def round(self, indices: list[int]) -> tuple[Trajectory, torch.Tensor, int]:
        """The trajectories of the prompts ``indices`` (stacked), all pairs [P, 2] of rows whose averaged
        scores differ by more than the margin (winner first), and the number of tied pairs dropped."""
        from diffalign.training.d3po import prompt_pairs

        trajectories, pairs, dropped, offset = [], [], 0, 0
        for index in indices:
            prompt_id = self.prompt_ids[index]
            trajectory = self.load(prompt_id)
            scores = torch.tensor(self.scores[prompt_id])[:, None]
            found, ties = prompt_pairs(1, trajectory.batch_size, scores, self.margin)
            pairs.append(found + offset)
            dropped += ties
            offset += trajectory.batch_size
            trajectories.append(trajectory)
        return Trajectory.concat(trajectories), torch.cat(pairs), dropped


# The labeling page -----------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffalign labeling</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
.prompt { border: 1px solid #ccc; padding: .8em; margin-bottom: 1em; }
.prompt.saved { border-color: #2a2; }
.images { display: flex; flex-wrap: wrap; gap: 1em; }
.image img { width: 192px; height: 192px; image-rendering: pixelated; display: block; }
.status { color: #2a2; margin-left: 1em; }
</style></head>
<body>
<h1>Rank the images of each prompt</h1>
<p>1 = best (ties allowed). Tick "bad" for a distorted image. Labels save when you press Save and stay after a reload.</p>
<label>Annotator <input id="annotator" placeholder="your name"></label>
<button id="load">Load my labels</button>
<div id="prompts"></div>
<script>
const annotatorBox = document.getElementById("annotator");
annotatorBox.value = localStorage.getItem("diffalign-annotator") || "";
async function load() {
  const annotator = annotatorBox.value.trim();
  localStorage.setItem("diffalign-annotator", annotator);
  const prompts = (await (await fetch("/api/prompts")).json()).prompts;
  const labels = annotator ? await (await fetch("/api/labels?annotator=" + encodeURIComponent(annotator))).json() : {};
  const root = document.getElementById("prompts");
  root.innerHTML = "";
  for (const prompt of prompts) {
    const card = document.createElement("div");
    card.className = "prompt";
    card.id = "prompt-" + prompt.prompt_id;
    card.innerHTML = "<h3></h3><div class='images'></div><button class='save'>Save</button><span class='status'></span>";
    card.querySelector("h3").textContent = prompt.prompt;
    const saved = labels[prompt.prompt_id];
    prompt.images.forEach((url, i) => {
      const cell = document.createElement("div");
      cell.className = "image";
      let options = "<option value=''>rank</option>";
      for (let r = 1; r <= prompt.images.length; r++) options += "<option value='" + r + "'>" + r + "</option>";
      cell.innerHTML = "<img><select class='rank'>" + options + "</select><label><input type='checkbox' class='bad'> bad</label>";
      cell.querySelector("img").src = url;
      if (saved) {
        cell.querySelector(".rank").value = saved.ranks[i] === null ? "" : String(saved.ranks[i]);
        cell.querySelector(".bad").checked = saved.bad[i];
      }
      card.querySelector(".images").appendChild(cell);
    });
    if (saved) { card.classList.add("saved"); card.querySelector(".status").textContent = "saved"; }
    card.querySelector(".save").onclick = () => save(prompt.prompt_id, card);
    root.appendChild(card);
  }
  document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
}
async function save(promptId, card) {
  const ranks = [...card.querySelectorAll(".rank")].map(s => s.value === "" ? null : Number(s.value));
  const bad = [...card.querySelectorAll(".bad")].map(b => b.checked);
  const body = {annotator: annotatorBox.value.trim(), prompt_id: promptId, ranks: ranks, bad: bad};
  const response = await fetch("/api/labels", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(body)});
  const result = await response.json();
  card.querySelector(".status").textContent = response.ok ? "saved" : ("not saved: " + result.error);
  if (response.ok) card.classList.add("saved");
}
document.getElementById("load").onclick = load;
load();
</script></body></html>
"""


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The labeling page's HTTP server for a label folder (not started; ``serve_forever`` runs it).
    Binds to 127.0.0.1 unless told otherwise; every save is one appended, fsynced line."""
    folder = Path(folder).resolve()
    prompts = read_prompts(folder)
    lock = threading.Lock()
    labels_path = folder / LABELS_FILE

    def saved_labels(annotator: str) -> dict:
        if not labels_path.is_file():
            return {}
        found = {}
        for line in labels_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("annotator") == annotator:
                    found[row["prompt_id"]] = {"ranks": row["ranks"], "bad": row["bad"]}
        return found

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/":
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/prompts":
                self._json(HTTPStatus.OK, {"prompts": [
                    {"prompt_id": pid, "prompt": row["prompt"], "images": ["/" + image for image in row["images"]]}
                    for pid, row in prompts.items()]})
            elif url.path == "/api/labels":
                annotator = parse_qs(url.query).get("annotator", [""])[0]
                with lock:
                    self._json(HTTPStatus.OK, saved_labels(annotator))
            elif url.path.startswith("/images/") and "/" not in url.path[len("/images/"):]:
                image = folder / "images" / url.path[len("/images/"):]
                if image.is_file():
                    self._send(HTTPStatus.OK, image.read_bytes(), "image/png")
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no image {image.name}"})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})

        def do_POST(self) -> None:
            if urlparse(self.path).path != "/api/labels":
                self._json(HTTPStatus.NOT_FOUND, {"error": "POST only to /api/labels"})
                return
            try:
                row = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                label = check_label(row, prompts, "label")
            except (DataError, json.JSONDecodeError, ValueError) as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            with lock, labels_path.open("a") as handle:
                handle.write(json.dumps(label) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._json(HTTPStatus.OK, {"ok": True})

        def log_message(self, format: str, *args) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)
