"""D3PO: pairing, scorer-mode and human-mode training on the tiny SD model, distributed gradients, errors."""

from __future__ import annotations

import json

import pytest
import torch

from diffalign.config import ConfigError, D3PORunConfig, load_config
from diffalign.data import DataError
from diffalign.training.checkpoint import trainable_state_dict
from diffalign.training.d3po import D3POTrainer, prompt_pairs

PROMPTS = ["a red circle", "a blue square", "a large green triangle on the left", "a red circle and a blue square"]


def d3po_config(tmp_path, model, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return load_config(None, [
        f"model.pretrained={model}", f"prompts.train=jsonl:{prompts}", f"output_dir={tmp_path / 'run'}",
        "d3po.scorers=[shapes-clip]", "d3po.images_per_prompt=3", "sampling.num_inference_steps=3",
        "sampling.guidance_scale=3", "train.rollout_prompts=2", "train.pair_batch_size=2", "train.max_steps=2",
        "train.learning_rate=1e-2", "lora.rank=4", "logging.tracker=none", "logging.every=1", "checkpoint.every=0",
        *overrides], cls=D3PORunConfig)


def test_prompt_pairs_pareto_within_each_prompt():
    # 2 prompts x K=3; two rewards; prompt 0: image 0 dominates both; 1 vs 2 incomparable
    scores = torch.tensor([[3.0, 3.0], [1.0, 2.0], [2.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    pairs, dropped = prompt_pairs(2, 3, scores, margin=0.0)
    assert pairs.tolist() == [[0, 1], [0, 2], [5, 3], [5, 4]] and dropped == 2  # (1, 2) incomparable, (3, 4) tie


def test_scorer_mode_trains_after_a_replay_check(tmp_path, tiny_sd, capsys):
    from diffusers import StableDiffusionPipeline

    trainer = D3POTrainer(d3po_config(tmp_path, tiny_sd, "d3po.timestep_fraction=0.67",
                                      "d3po.scorers=[shapes-clip, shapes-checker-fraction]"))
    trainer.setup()
    before = {k: v.clone() for k, v in trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet)).items()}
    final = trainer.train()
    assert "replay check passed" in capsys.readouterr().out
    after = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [row for row in trainer.history if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row["pairs"] + row["ties_dropped"] == 6 for row in rows)  # 2 prompts x 3 pairs
    assert {"sample/shapes-clip", "sample/shapes-checker-fraction"} <= rows[0].keys()
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first round
    assert "weights" in final
    StableDiffusionPipeline.from_pretrained(tiny_sd).load_lora_weights(tmp_path / "run")



def test_a_logged_row_is_the_mean_over_the_rounds_since_the_last_row(tmp_path, tiny_sd):
    rows = {}
    for every in (1, 2):
        trainer = D3POTrainer(d3po_config(tmp_path / str(every), tiny_sd, f"logging.every={every}"))
        trainer.setup()
        trainer.run_steps()
        rows[every] = [row for row in trainer.history if "loss" in row]
    assert [row["step"] for row in rows[2]] == [2]
    for key in ("loss", "pairs", "sample/shapes-clip"):
        assert rows[2][0][key] == pytest.approx((rows[1][0][key] + rows[1][1][key]) / 2, rel=1e-5), key

def person_labels(folder, annotators=("ana", "ben")):
    """A script standing in for people: ranks every prompt's images by brightness (ana) or its reverse for
    the last image (ben), and marks nothing or the last image bad."""
    rows = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    from PIL import Image

    lines = []
    for row in rows:
        brightness = [sum(Image.open(folder / image).convert("L").getdata()) for image in row["images"]]
        order = sorted(range(len(brightness)), key=lambda i: -brightness[i])
        ranks = [order.index(i) + 1 for i in range(len(brightness))]
        for name in annotators:
            bad = [name == "ben" and i == len(ranks) - 1 for i in range(len(ranks))]
            lines.append(json.dumps({"annotator": name, "prompt_id": row["prompt_id"],
                                     "ranks": [None if b else r for r, b in zip(ranks, bad)], "bad": bad}))
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")


def test_human_mode_from_sampled_rollouts_and_labels(tmp_path, tiny_sd):
    from diffalign.cli import main
    from diffalign.labeling import LabelledRollouts, averaged_scores, read_labels

    config = d3po_config(tmp_path, tiny_sd)
    folder = tmp_path / "labels"
    config_file = tmp_path / "d3po.yaml"
    import yaml

    from diffalign.config import to_dict

    config_file.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["label", "sample", "--config", str(config_file), "--out", str(folder), "--limit", "3"]) == 0
    assert len(list((folder / "images").glob("*.png"))) == 9 and len(list((folder / "rollouts").iterdir())) == 3
    person_labels(folder)
    labels = read_labels(folder)
    assert len(labels) == 6 and all(len(label["scores"]) == 3 for label in labels)
    averaged = averaged_scores(labels)
    assert any(-1 in label["scores"] for label in labels) and len(averaged) == 3
    stored = LabelledRollouts(folder)
    trajectory, pairs, _ = stored.round([0, 2])
    assert trajectory.batch_size == 6 and 0 < len(pairs) <= 6 and int(pairs.max()) < 6
    human = D3POTrainer(d3po_config(tmp_path / "h", tiny_sd, "d3po.labels=human", f"d3po.label_dir={folder}",
                                    "d3po.scorers=[]"))
    human.setup()
    human.run_steps()
    assert all(row["pairs"] > 0 and row["pairs"] + row["ties_dropped"] == 6 for row in human.history)

    with (folder / "labels.jsonl").open("a") as handle:
        handle.write(json.dumps({"annotator": "cy", "prompt_id": "99999", "ranks": [1, 2, 3], "bad": [False] * 3}) + "\n")
    with pytest.raises(DataError, match=r"labels.jsonl:7: unknown prompt_id '99999'"):
        read_labels(folder)


def test_bad_d3po_configs_are_clear_errors(tmp_path, tiny_sd):
    with pytest.raises(ConfigError, match="sampling.eta must be > 0"):
        d3po_config(tmp_path, tiny_sd, "sampling.eta=0")
    with pytest.raises(ConfigError, match="images_per_prompt must be >= 2"):
        d3po_config(tmp_path, tiny_sd, "d3po.images_per_prompt=1")
    with pytest.raises(ConfigError, match="needs d3po.label_dir"):
        d3po_config(tmp_path, tiny_sd, "d3po.labels=human")


TWO_PROCESS_SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from safetensors.torch import save_file
from test_d3po import d3po_config
from diffalign.training.checkpoint import trainable_state_dict
from diffalign.training.d3po import D3POTrainer

model, folder = sys.argv[1], Path(sys.argv[2])
config = d3po_config(folder / "config", model, f"output_dir={folder / 'run'}", "train.max_steps=1",
                     "d3po.timestep_fraction=0.34", "train.rollout_prompts=1")
trainer = D3POTrainer(config)
trainer.setup()
trainer.run_steps()
weights = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet))
save_file(weights, str(folder / f"rank{trainer.accelerator.process_index}.safetensors"))
"""


def test_gradients_are_synchronised_across_two_processes(tmp_path, tiny_sd):
    """Two CPU processes sample different rollouts; one D3PO step through the accelerate-prepared UNet
    must leave identical LoRA weights on both (the gradients were all-reduced)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = tmp_path / "two_process_step.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    tests = str(Path(__file__).parent)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")  # accelerate: multi-CPU (gloo) DDP
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                    str(script), str(tiny_sd), str(tmp_path), tests], check=True, env=env, timeout=300)
    first, second = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    base = D3POTrainer(d3po_config(tmp_path / "base", tiny_sd))
    base.setup()
    initial = trainable_state_dict(base.accelerator.unwrap_model(base.unet))
    assert any(not torch.equal(first[k], initial[k]) for k in first)  # the step changed the weights
    assert all(torch.equal(first[k], second[k]) for k in first)  # identically on both processes


def test_cli_and_script_train_d3po(tmp_path, tiny_sd, capsys):
    import runpy
    import sys

    from diffalign.cli import main
    from diffalign.paths import ASSETS, asset

    common = [f"model.pretrained={tiny_sd}", "sampling.num_inference_steps=2", "train.rollout_prompts=2",
              "train.max_steps=1", "prompts.held_out_limit=2", "checkpoint.every=0"]
    config = str(asset("configs", "tiny-d3po.yaml"))
    assert main(["train", "d3po", "--config", config, f"output_dir={tmp_path / 'cli'}", *common]) == 0
    assert (tmp_path / "cli" / "pytorch_lora_weights.safetensors").is_file()
    sys.argv = ["train_d3po.py", "--config", config, f"output_dir={tmp_path / 'script'}", *common]
    runpy.run_path(str(ASSETS.parent / "scripts" / "train_d3po.py"), run_name="__main__")
    assert "done:" in capsys.readouterr().out
    summary = json.loads((tmp_path / "script" / "summary.json").read_text())
    assert "Pareto dominance" in summary["conventions"]["pairs"] and "eval/shapes-clip" in summary["final"]
