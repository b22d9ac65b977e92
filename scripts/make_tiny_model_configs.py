"""Write the configuration folders of the pipelines in assets/models/ (configs only, no weights).

- ``tiny-sd``, ``tiny-sdxl``: tiny SD / SDXL-architecture pipelines at 64x64 pixels (8x8x4 latents,
  VAE factor 8 as in SD), for the demo, the tests and CPU benchmarks.
- ``sd15-arch``, ``sdxl-arch``: the real SD 1.5 and SDXL base architectures (UNet, VAE and text
  encoder sizes from the published configs), for GPU memory/throughput benchmarks with random weights.

Scorer architectures in ``assets/models/scorers/`` (transformers ``CLIPModel`` folders with a
``preprocessor_config.json``, and an open_clip model config):

- ``tiny-clip``, ``tiny-open-clip.json``: tiny CLIP models (32 px input) for tests and the CPU demo.
- ``clip-vit-b32-arch``, ``clip-vit-l14-arch``, ``clip-vit-h14-arch``: the CLIP architectures of
  CLIPScore, the aesthetic predictor / CLIPScore-L14 and PickScore (HPS uses open_clip's own ViT-H-14).

``diffalign.tiny.build_random_pipeline`` / ``build_random_scorer`` instantiate them with seeded
random weights. All use a
character-level CLIP tokenizer (printable ASCII, no merges, 77 tokens) as an offline stand-in for the
CLIP BPE tokenizer; sequence length and model sizes match the real models.

    python scripts/make_tiny_model_configs.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}


def text_encoder(hidden: int, projection: bool, layers: int = 2, heads: int = 4) -> dict:
    return {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": 190,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "projection_dim": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu" if not projection else "gelu",
        "bos_token_id": 188,
        "eos_token_id": 189,
        "pad_token_id": 189,
    }


def unet(sdxl: bool) -> dict:
    config = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "norm_num_groups": 8,
    }
    if sdxl:
        config.update({
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2],
            "attention_head_dim": [2, 4],
            "use_linear_projection": True,
            "cross_attention_dim": 64,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8,
        })
    else:
        config.update({
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 4,
            "cross_attention_dim": 32,
        })
    return config


SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SDXL_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 128, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True, "cross_attention_dim": 2048, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}

FULL_VAE = dict(VAE, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)


def write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(code) for code in range(33, 127)]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2))


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_pipeline(folder: Path, sdxl: bool, full_size: bool = False) -> None:
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True})
    else:
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "requires_safety_checker": False})
    write_json(folder / "model_index.json", index)
    write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER)
    if full_size:
        vae = dict(FULL_VAE, sample_size=1024 if sdxl else 512, scaling_factor=0.13025 if sdxl else 0.18215)
        write_json(folder / "vae" / "config.json", vae)
        write_json(folder / "unet" / "config.json", SDXL_UNET if sdxl else SD15_UNET)
        write_json(folder / "text_encoder" / "config.json", text_encoder(768, projection=False, layers=12, heads=12))
    else:
        write_json(folder / "vae" / "config.json", VAE)
        write_json(folder / "unet" / "config.json", unet(sdxl))
        write_json(folder / "text_encoder" / "config.json", text_encoder(32, projection=False))
    write_tokenizer(folder / "tokenizer")
    if sdxl:
        second = text_encoder(1280, projection=True, layers=32, heads=20) if full_size else text_encoder(32, True)
        write_json(folder / "text_encoder_2" / "config.json", second)
        write_tokenizer(folder / "tokenizer_2")


CLIP_ARCHS = {  # name: (text hidden, layers, heads), (vision hidden, layers, heads, patch, image), projection, act
    "tiny-clip": ((32, 2, 4), (32, 2, 4, 8, 32), 32, "quick_gelu"),
    "clip-vit-b32-arch": ((512, 12, 8), (768, 12, 12, 32, 224), 512, "quick_gelu"),
    "clip-vit-l14-arch": ((768, 12, 12), (1024, 24, 16, 14, 224), 768, "quick_gelu"),
    "clip-vit-h14-arch": ((1024, 24, 16), (1280, 32, 16, 14, 224), 1024, "gelu"),
}

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_clip_scorer(folder: Path, name: str) -> None:
    """A transformers CLIPModel config + OpenAI-CLIP preprocessor config + the character tokenizer."""
    (text_hidden, text_layers, text_heads), (hidden, layers, heads, patch, image), projection, act = CLIP_ARCHS[name]
    vocab = 190 if name == "tiny-clip" else 49408
    write_json(folder / "config.json", {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": projection,
        "logit_scale_init_value": 2.6592,
        "text_config": {"vocab_size": vocab, "hidden_size": text_hidden, "intermediate_size": 4 * text_hidden,
                        "num_hidden_layers": text_layers, "num_attention_heads": text_heads,
                        "max_position_embeddings": 77, "hidden_act": act, "projection_dim": projection,
                        "bos_token_id": 188, "eos_token_id": 189, "pad_token_id": 189},
        "vision_config": {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
                          "num_attention_heads": heads, "patch_size": patch, "image_size": image,
                          "hidden_act": act, "projection_dim": projection}})
    write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image, "width": image},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]})
    write_tokenizer(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "models"))
    args = parser.parse_args()
    out = Path(args.out)
    for name, sdxl, full_size in [("tiny-sd", False, False), ("tiny-sdxl", True, False),
                                  ("sd15-arch", False, True), ("sdxl-arch", True, True)]:
        write_pipeline(out / name, sdxl=sdxl, full_size=full_size)
        print(f"wrote {out / name}")
    for name in CLIP_ARCHS:
        write_clip_scorer(out / "scorers" / name, name)
        print(f"wrote {out / 'scorers' / name}")
    write_json(out / "scorers" / "tiny-open-clip.json", TINY_OPEN_CLIP)


if __name__ == "__main__":
    main()
