"""Scorers: tiny models saved in their published formats, loaded through the real loaders, checked
against independent computations (the models' own forward passes and hand-written preprocessing)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from diffalign.paths import asset
from diffalign.scorers import (AestheticHead, ClipPreprocess, ScorerEnsemble, ScorerLoadError, ScorerSpecError,
                               available_scorers,
                               get_scorer, jpeg_size_kb, parse_scorer_spec, pil_to_tensor, win_fractions,
                               zscore_mean)
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from diffalign.tiny import build_random_scorer

PROMPTS = ["a large red circle", "a small blue square on the left", "a green triangle", "a yellow circle",
           "a purple square", "an orange triangle at the top", "a red square and a blue circle"]
DIFFERENTIABLE = ("pickscore", "clipscore", "clipscore-l14", "aesthetic", "hpsv2", "hpsv2.1")


def shape_images(count: int = 7) -> list[Image.Image]:
    """The project's 64x64 coloured-shape images (smooth content, like generated samples)."""
    folder = asset("data", "tiny-prefs", "images")
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))[:count]]


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def scorers(tiny_scorer_specs):
    return {name: get_scorer(spec) for name, spec in tiny_scorer_specs.items()}


# Preprocessing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 64), (37, 53), (80, 45), (17, 40), (300, 200)])
def test_pil_path_equals_the_transformers_clip_processor(size):
    image = noise_image(*size)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.equal(ClipPreprocess(32).pil([image]), expected)


@pytest.mark.parametrize("size", [(64, 64), (40, 64), (64, 23)])
def test_longest_side_path_equals_hpsv2_resize_max_size(size):
    """HPSv2's eval transform: resize the longest side (bicubic on PIL), zero-pad, ToTensor, Normalize."""
    image = noise_image(*size, seed=1)
    scale = 32 / max(size)
    new_h, new_w = round(size[0] * scale), round(size[1] * scale)
    resized = TF.resize(image, [new_h, new_w], interpolation=TF.InterpolationMode.BICUBIC)
    pad_h, pad_w = 32 - new_h, 32 - new_w
    padded = TF.pad(resized, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    expected = TF.normalize(TF.to_tensor(padded), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert torch.allclose(ClipPreprocess(32, geometry="longest").pil([image])[0], expected, atol=1e-6)


@pytest.mark.parametrize("geometry", ["shortest", "longest"])
def test_tensor_path_is_close_to_pil_path_on_smooth_images(geometry):
    """The bound stated in docs/scorers.md: mean |difference| < 0.002 and max < 0.1 in normalised units."""
    images = [image.resize((512, 512), Image.Resampling.BICUBIC) for image in shape_images(4)]
    preprocess = ClipPreprocess(224, geometry=geometry)
    difference = (preprocess.tensor(pil_to_tensor(images)) - preprocess.pil(images)).abs()
    assert difference.mean() < 0.002 and difference.max() < 0.1


def test_bad_image_inputs_have_clear_errors(scorers):
    scorer = scorers["pickscore"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scorer(torch.rand(2, 3, 32, 32) * 2 - 1, PROMPTS[:2])
    with pytest.raises(TypeError, match="float"):
        scorer(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), PROMPTS[:1])
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        scorer(shape_images(2), PROMPTS[:3])
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(shape_images(2))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        scorer(torch.rand(2, 1, 32, 32), PROMPTS[:2])


# Score formulas against the models' own forward passes -------------------------------------------

def _clip_outputs(folder: str, images, texts):
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model, model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])


def test_pickscore_equals_clip_logits_per_image(scorers, tiny_scorer_specs):
    images = shape_images()
    _, options = parse_scorer_spec(tiny_scorer_specs["pickscore"])
    _, outputs = _clip_outputs(options["model"], images, PROMPTS)
    expected = outputs.logits_per_image.diagonal()
    assert torch.allclose(scorers["pickscore"](images, PROMPTS), expected, atol=1e-4)


def test_clipscore_is_hessel_definition_with_prefix(scorers, tiny_scorer_specs):
    images = shape_images()
    _, options = parse_scorer_spec(tiny_scorer_specs["clipscore"])
    _, outputs = _clip_outputs(options["model"], images, ["A photo depicts " + p for p in PROMPTS])
    cosine = (outputs.image_embeds * outputs.text_embeds).sum(-1)
    assert torch.allclose(scorers["clipscore"](images, PROMPTS), 2.5 * cosine.clamp(min=0), atol=1e-5)
    _, outputs = _clip_outputs(options["model"], images, PROMPTS)
    cosine = (outputs.image_embeds * outputs.text_embeds).sum(-1)
    assert torch.allclose(scorers["clipscore-l14"](images, PROMPTS), 100 * cosine.clamp(min=0), atol=1e-3)


def test_aesthetic_is_mlp_of_normalised_image_embedding(scorers, tiny_scorer_specs):
    from safetensors.torch import load_file

    images = shape_images()
    _, options = parse_scorer_spec(tiny_scorer_specs["aesthetic"])
    model, outputs = _clip_outputs(options["clip"], images, PROMPTS)
    weights = load_file(options["head"])
    hidden = outputs.image_embeds
    for index in (0, 2, 4, 6, 7):
        hidden = F.linear(hidden, weights[f"layers.{index}.weight"], weights[f"layers.{index}.bias"])
    scores = scorers["aesthetic"](images)
    assert torch.allclose(scores, hidden.squeeze(-1), atol=1e-5)
    assert torch.equal(scores, scorers["aesthetic"](images, PROMPTS)), "the aesthetic score ignores prompts"


@pytest.mark.parametrize("version", ["hpsv2", "hpsv2.1"])
def test_hps_is_cosine_of_open_clip_features(scorers, tiny_scorer_specs, version):
    import open_clip

    images = shape_images()
    _, options = parse_scorer_spec(tiny_scorer_specs[version])
    model = open_clip.create_model("tiny-open-clip", pretrained=None)
    model.load_state_dict(torch.load(options["checkpoint"], weights_only=True)["state_dict"])
    model.eval()
    pixels = torch.stack([TF.normalize(TF.to_tensor(TF.resize(image, [32, 32], TF.InterpolationMode.BICUBIC)),
                                       OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) for image in images])
    with torch.no_grad():
        image_features, text_features, _ = model(pixels, open_clip.get_tokenizer("tiny-open-clip")(PROMPTS))
    expected = (image_features * text_features).sum(-1)
    assert torch.allclose(scorers[version](images, PROMPTS), expected, atol=1e-5)


def test_jpeg_scores_are_signed_sizes_in_kb():
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), noise_image(64, 64)]
    buffer = io.BytesIO()
    images[1].save(buffer, format="JPEG", quality=95)
    assert jpeg_size_kb(images[1]) == len(buffer.getvalue()) / 1000
    incompressibility = get_scorer("jpeg-incompressibility")(images)
    compressibility = get_scorer("jpeg-compressibility")(images)
    assert torch.equal(compressibility, -incompressibility)
    assert incompressibility[1] > 5 * incompressibility[0], "noise is much larger than a flat image"
    tensors = pil_to_tensor(images)
    assert torch.equal(get_scorer("jpeg-incompressibility")(tensors), incompressibility)
    with pytest.raises(TypeError, match="no differentiable"):
        get_scorer("jpeg-compressibility")(tensors, path="tensor")


# Interface properties -------------------------------------------------------------------------

@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_scores_do_not_depend_on_batch_size(scorers, name):
    images = shape_images()
    one_by_one = scorers[name](images, PROMPTS, batch_size=1)
    batched = scorers[name](images, PROMPTS, batch_size=5)
    assert one_by_one.shape == (7,) and one_by_one.dtype == torch.float32
    assert torch.allclose(one_by_one, batched, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradient_flows_through_tensor_path_and_matches_pil_path(scorers, name):
    images = pil_to_tensor(shape_images(4)).requires_grad_(True)
    scores = scorers[name](images, PROMPTS[:4])
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in scorers[name].parameters()), "scorer weights stay frozen"
    pil_scores = scorers[name](shape_images(4), PROMPTS[:4])
    spread = pil_scores.abs().max().clamp(min=1e-3)
    assert ((scores.detach() - pil_scores).abs() / spread).max() < 0.05


def test_text_features_are_computed_once_per_prompt(scorers):
    scorer = scorers["pickscore"]
    scorer._text_cache.clear()
    calls = []
    original = scorer.encode_text
    scorer.encode_text = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        scorer(shape_images(4), ["a red circle"] * 2 + ["a blue square"] * 2, batch_size=2)
        scorer(shape_images(2), ["a red circle", "a green triangle"])
    finally:
        del scorer.encode_text
    assert calls == [["a red circle"], ["a blue square"], ["a green triangle"]]


def test_scorers_stay_in_eval_mode_and_cast(tiny_scorer_specs):
    scorer = get_scorer(tiny_scorer_specs["aesthetic"])
    scorer.train()
    assert not scorer.training and not scorer.head.training
    images = shape_images(3)
    reference = scorer(images)
    half = get_scorer(tiny_scorer_specs["aesthetic"], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half(images), reference, atol=0.05)


# Ensemble -------------------------------------------------------------------------------------

def test_win_fractions_hand_computed():
    scores = torch.tensor([[[3.0, 1.0, 2.0]], [[1.0, 1.0, 5.0]]])  # 2 scorers, 1 group, K=3
    # scorer 0: image0 beats 1,2 (2 wins); image1 0; image2 1. scorer 1: image0 ties 1 (0.5); image1 0.5; image2 2.
    expected = torch.tensor([[2.5, 0.5, 3.0]]) / (2 * 2)
    assert torch.allclose(win_fractions(scores), expected)
    assert torch.allclose(win_fractions(scores).sum(-1), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="K >= 2"):
        win_fractions(torch.zeros(1, 3, 1))


def test_zscore_mean_hand_computed():
    scores = torch.tensor([[[1.0, 2.0, 3.0]], [[10.0, 10.0, 10.0]]])
    std = float(np.std([1, 2, 3]))
    expected = torch.tensor([[-1 / std, 0.0, 1 / std]]) / 2  # the constant scorer contributes 0
    assert torch.allclose(zscore_mean(scores), expected, atol=1e-6)
    assert torch.allclose(zscore_mean(scores, weights=[3, 1]), expected * 2 * 0.75, atol=1e-6)


def test_ensemble_group_labels(scorers):
    ensemble = ScorerEnsemble([scorers["pickscore"], scorers["hpsv2.1"], get_scorer("jpeg-incompressibility")])
    images = shape_images(6)
    labels = ensemble.group_labels(images, ["a red circle"] * 3 + ["a blue square"] * 3, group_size=3)
    assert labels["raw"].shape == (3, 2, 3)
    assert labels["win_fraction"].shape == (2, 3) and labels["zscore"].shape == (2, 3)
    assert torch.allclose(labels["win_fraction"].sum(-1), torch.full((2,), 1.5))
    assert torch.allclose(labels["raw"][0].flatten(), scorers["pickscore"](images, ["a red circle"] * 3
                                                                             + ["a blue square"] * 3))
    with pytest.raises(ValueError, match="groups of K=4"):
        ensemble.group_labels(images, PROMPTS[:6], group_size=4)


# Registry and loading errors ----------------------------------------------------------------------

def test_registry_names_specs_and_option_errors():
    assert {"pickscore", "hpsv2", "hpsv2.1", "aesthetic", "clipscore", "jpeg-compressibility"} <= set(
        available_scorers())
    assert parse_scorer_spec("hpsv2.1:checkpoint=/w/a.pt, batch_size=8") == (
        "hpsv2.1", {"checkpoint": "/w/a.pt", "batch_size": 8})
    with pytest.raises(KeyError, match="available: aesthetic"):
        get_scorer("imagereward-v9")
    with pytest.raises(ScorerSpecError, match="no option model.*checkpoint"):
        get_scorer("hpsv2.1:model=/x")
    with pytest.raises(ScorerSpecError, match="not key=value"):
        parse_scorer_spec("pickscore:oops")


def test_missing_local_weights_name_the_option(tmp_path):
    with pytest.raises(ScorerLoadError, match="option model="):
        get_scorer(f"pickscore:model={tmp_path / 'nowhere'}")
    with pytest.raises(ScorerLoadError, match="HPS_v2.1_compressed.pt.*option checkpoint="):
        get_scorer(f"hpsv2.1:checkpoint={tmp_path},architecture={asset('models', 'scorers', 'tiny-open-clip.json')}")


def test_unreachable_hub_gives_download_instructions(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ScorerLoadError, match="huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt"):
        get_scorer(f"hpsv2.1:architecture={asset('models', 'scorers', 'tiny-open-clip.json')}")


def test_checkpoints_load_strictly_and_safely(tmp_path, tiny_scorer_specs):
    _, options = parse_scorer_spec(tiny_scorer_specs["hpsv2.1"])
    state = torch.load(options["checkpoint"], weights_only=True)["state_dict"]
    state.pop("logit_scale")
    broken = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": state}, broken)
    with pytest.raises(ScorerLoadError, match="1 missing \\(e.g. logit_scale\\)"):
        get_scorer(f"hpsv2.1:checkpoint={broken},architecture={options['architecture']}")
    head = tmp_path / "aesthetic-model.pth"
    torch.save(AestheticHead(32).state_dict(), head)  # the published head is a torch .pth state dict
    _, aesthetic = parse_scorer_spec(tiny_scorer_specs["aesthetic"])
    assert get_scorer("aesthetic", clip=aesthetic["clip"], head=str(tmp_path))(shape_images(2)).shape == (2,)
    torch.save({"layers.0.weight": torch.zeros(1024, 99)}, head)
    with pytest.raises(ScorerLoadError, match="does not match the architecture"):
        get_scorer("aesthetic", clip=aesthetic["clip"], head=str(head))


def test_full_size_builder_uses_published_architectures(tmp_path):
    spec = build_random_scorer("jpeg-compressibility", tmp_path)
    assert spec == "jpeg-compressibility"
    config = CLIPModel.config_class.from_pretrained(asset("models", "scorers", "clip-vit-h14-arch"))
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers, config.projection_dim) == (
        1280, 32, 1024)
