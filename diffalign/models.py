"""Loading SD 1.x/2.x and SDXL components, prompt/image encoding, attention backend, LoRA, reference.

Shapes: prompt embeds [B, L, D] (SD: last hidden state of the CLIP text encoder; SDXL: concat of
both encoders' penultimate hidden states, D = 768 + 1280 = 2048); pooled embeds [B, 1280] (SDXL
only, projected output of the second encoder); SDXL time ids [B, 6] = (orig_h, orig_w, crop_top,
crop_left, target_h, target_w). Pixels enter the VAE in [-1, 1]; latents are the posterior mean
times ``vae.config.scaling_factor``.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffalign.config import LoraConfig, ModelConfig
from diffalign.unets import load_unet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model component could not be loaded (missing files, no network, wrong folder)."""


@dataclass
class Components:
    """The parts of an SD / SDXL pipeline a trainer needs. ``text_encoders`` has 1 (SD) or 2 (SDXL) entries."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list
    tokenizers: list
    noise_scheduler: DDPMScheduler
    source: str

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl_unet(self.unet)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@dataclass
class PromptEmbeds:
    """Text conditioning: prompt_embeds [B, L, D]; pooled [B, P] for SDXL, else None."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def is_sdxl_unet(unet: UNet2DConditionModel) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def _load(loader, what: str, source: str, **kwargs):
    subfolder = kwargs.get("subfolder")
    local = Path(source)
    if source.startswith((".", "/", "~")) or local.exists():
        expected = local / subfolder if subfolder else local
        if not expected.is_dir():
            raise ModelLoadError(f"Could not load the {what}: the local folder {expected} does not exist. "
                                 "model.pretrained must be a diffusers pipeline folder (unet/, vae/, text_encoder/, "
                                 "tokenizer/, scheduler/) or a Hub id such as stabilityai/stable-diffusion-xl-base-1.0.")
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"Could not load the {what} from '{source}' ({subfolder or 'root'}): {error}\n"
            f"Point model.pretrained (or model.vae) at a local diffusers folder, or download it first, e.g. "
            f"`huggingface-cli download {source} --local-dir <folder>`; offline, set HF_HUB_OFFLINE=1.") from error


def load_components(model: ModelConfig) -> Components:
    """Load the UNet, VAE, text encoder(s), tokenizer(s) and the training noise schedule.

    ``model.pretrained`` is a Hub id or a local folder in the diffusers layout; SDXL is detected
    from the UNet config (``addition_embed_type == "text_time"``). ``model.vae`` optionally
    replaces the pipeline's VAE (a folder with the VAE at its root, e.g. the fp16-fix VAE).
    """
    source = model.pretrained
    common = {"revision": model.revision}
    weights = dict(common, variant=model.variant)
    unet = _load(load_unet, "UNet", source, subfolder="unet", **weights)
    if model.vae:
        vae = _load(AutoencoderKL.from_pretrained, "VAE", model.vae, variant=model.variant)
    else:
        vae = _load(AutoencoderKL.from_pretrained, "VAE", source, subfolder="vae", **weights)
    tokenizers = [_load(CLIPTokenizer.from_pretrained, "tokenizer", source, subfolder="tokenizer", **common)]
    text_encoders = [_load(CLIPTextModel.from_pretrained, "text encoder", source, subfolder="text_encoder", **weights)]
    if is_sdxl_unet(unet):
        tokenizers.append(_load(CLIPTokenizer.from_pretrained, "second tokenizer", source,
                                subfolder="tokenizer_2", **common))
        text_encoders.append(_load(CLIPTextModelWithProjection.from_pretrained, "second text encoder", source,
                                   subfolder="text_encoder_2", **weights))
    noise_scheduler = _load(DDPMScheduler.from_pretrained, "scheduler", source, subfolder="scheduler", **common)
    if model.prediction_type:
        noise_scheduler.register_to_config(prediction_type=model.prediction_type)
    return Components(unet=unet, vae=vae, text_encoders=text_encoders, tokenizers=tokenizers,
                      noise_scheduler=noise_scheduler, source=source)


def freeze_and_cast(components: Components, weight_dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
    """Freeze VAE and text encoders in eval mode and cast them (and the UNet) for training."""
    components.vae.requires_grad_(False).eval()
    if components.vae.dtype != vae_dtype:
        components.vae.to(dtype=vae_dtype)
    for encoder in components.text_encoders:
        encoder.requires_grad_(False).eval()
        if encoder.dtype != weight_dtype:
            encoder.to(dtype=weight_dtype)
    components.unet.requires_grad_(False)


# Attention -------------------------------------------------------------------------------------

def xformers_status(device: torch.device) -> tuple[bool, str]:
    """Whether xformers' memory-efficient attention can run on ``device``, and why not."""
    if device.type != "cuda":
        return False, f"xformers needs a CUDA device, this run is on {device.type}"
    if importlib.util.find_spec("xformers") is None:
        return False, "xformers is not installed (pip install 'diffalign[xformers]')"
    try:
        import xformers.ops

        query = torch.zeros(1, 8, 1, 64, device=device, dtype=torch.float16)
        xformers.ops.memory_efficient_attention(query, query, query)
    except Exception as error:  # xformers raises many types when its kernels are missing
        return False, f"xformers is installed but cannot run here: {type(error).__name__}: {error}"
    return True, "ok"


def resolve_attention_backend(requested: str, device: torch.device) -> str:
    """'auto' -> 'xformers' where it can run, else 'sdpa'; 'xformers' where it cannot run -> error."""
    if requested == "sdpa":
        return "sdpa"
    usable, reason = xformers_status(device)
    if requested == "xformers":
        if not usable:
            raise RuntimeError(f"model.attention=xformers was requested but {reason}. Use model.attention=sdpa or auto.")
        return "xformers"
    if requested == "auto":
        return "xformers" if usable else "sdpa"
    raise ValueError(f"unknown attention backend {requested!r}: expected auto, sdpa or xformers")


def set_attention_backend(unet: UNet2DConditionModel, backend: str) -> None:
    """Install the attention processors of ``backend`` ('sdpa' or 'xformers') in every attention layer."""
    if backend == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    elif backend == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    else:
        raise ValueError(f"unknown attention backend {backend!r}")


# LoRA and reference ----------------------------------------------------------------------------

def add_lora(unet: UNet2DConditionModel, lora: LoraConfig) -> list[torch.nn.Parameter]:
    """Add peft LoRA adapters to the UNet; returns the trainable LoRA parameters, cast to float32.

    Adapters start with B = 0 (peft's default), so the policy equals the base model at step 0.
    """
    from peft import LoraConfig as PeftLoraConfig

    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
                                 lora_dropout=lora.dropout, init_lora_weights=True,
                                 target_modules=list(lora.target_modules))
    try:
        unet.add_adapter(peft_config)
    except ValueError as error:
        raise ValueError(f"lora.target_modules={lora.target_modules} do not match UNet modules: {error}") from error
    params = [p for p in unet.parameters() if p.requires_grad]
    for param in params:
        param.data = param.data.float()
    return params


class Reference:
    """The frozen reference policy of DPO, run under the caller's autocast like the policy.

    With LoRA it is the same UNet with adapters disabled (no second copy in memory); for a full
    fine-tune it is a frozen copy of the initial UNet in the frozen-weight dtype. :meth:`refresh`
    makes the policy's current weights the reference (Curriculum DPO's per-stage reference): with
    LoRA they go into a second, frozen adapter named ``reference`` that is switched on only inside
    :meth:`active`.
    """

    ADAPTER = "reference"

    def __init__(self, unet: UNet2DConditionModel, use_lora: bool, weight_dtype: torch.dtype):
        self.use_lora = use_lora
        self.unet = unet if use_lora else copy.deepcopy(unet).requires_grad_(False).eval().to(dtype=weight_dtype)
        self.source_step: int | None = None  # the optimizer step whose weights are the reference (None = the base)

    @contextmanager
    def active(self) -> Iterator[UNet2DConditionModel]:
        """Yield the reference UNet; with LoRA, the adapters are switched inside the block only."""
        if not self.use_lora:
            yield self.unet
            return
        if self.source_step is None:
            self.unet.disable_adapters()
            try:
                yield self.unet
            finally:
                self.unet.enable_adapters()
            return
        self.unet.set_adapter(self.ADAPTER)
        try:
            yield self.unet
        finally:
            self._train_default_adapter()

    def _train_default_adapter(self) -> None:
        """Activate the trained adapter again; peft's set_adapter also flips requires_grad, so the
        reference adapter is frozen explicitly."""
        self.unet.set_adapter("default")
        for name, param in self.unet.named_parameters():
            if f".{self.ADAPTER}." in name:
                param.requires_grad_(False)

    def _lora_pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """(reference, policy) parameter pairs of the two adapters."""
        params = dict(self.unet.named_parameters())
        return [(params[name.replace(".default.", f".{self.ADAPTER}.")], param)
                for name, param in params.items() if ".default." in name]

    def _ensure_adapter(self) -> None:
        """Add the frozen reference adapter (the trained adapter's config, without dropout) once."""
        if self.ADAPTER not in self.unet.peft_config:
            config = copy.deepcopy(self.unet.peft_config["default"])
            config.lora_dropout = 0.0
            with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.unet.add_adapter(config, adapter_name=self.ADAPTER)
            self._train_default_adapter()

    @torch.no_grad()
    def refresh(self, policy: UNet2DConditionModel, step: int) -> None:
        """Make the policy's weights at optimizer step ``step`` the reference (``policy``: the unwrapped
        training UNet; with LoRA it is this same UNet and its trained adapter is copied)."""
        if self.use_lora:
            self._ensure_adapter()
            for reference, trained in self._lora_pairs():
                reference.copy_(trained)
        else:
            self.unet.load_state_dict(policy.state_dict())
        self.source_step = step

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The refreshed reference's own weights (for checkpoints): the reference adapter, or the whole UNet."""
        if self.source_step is None:
            raise RuntimeError("the reference is the base model; there is nothing to save")
        if not self.use_lora:
            return {name: tensor.detach().cpu().contiguous() for name, tensor in self.unet.state_dict().items()}
        params = dict(self.unet.named_parameters())
        return {name: param.detach().cpu().contiguous() for name, param in params.items() if f".{self.ADAPTER}." in name}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], step: int) -> None:
        """Restore a reference saved by :meth:`state_dict` at optimizer step ``step``."""
        if self.use_lora:
            self._ensure_adapter()
            params = dict(self.unet.named_parameters())
            missing = {name for name in params if f".{self.ADAPTER}." in name} - state.keys()
            if missing:
                raise RuntimeError(f"saved reference lacks {len(missing)} adapter tensors, e.g. {sorted(missing)[0]}")
            for name, tensor in state.items():
                params[name].copy_(tensor)
        else:
            self.unet.load_state_dict(state)
        self.source_step = step


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """LoRA weights in the diffusers format that ``pipe.load_lora_weights`` reads."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


# Encoding --------------------------------------------------------------------------------------

def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, tokenizer.model_max_length], padded and truncated as the SD pipelines do."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(components: Components, prompts: list[str], device: torch.device) -> PromptEmbeds:
    """Text conditioning for ``prompts`` as the diffusers SD / SDXL pipelines compute it."""
    if not components.is_sdxl:
        (tokenizer,), (encoder,) = components.tokenizers, components.text_encoders
        return PromptEmbeds(encoder(tokenize(tokenizer, prompts).to(device))[0])
    hidden, pooled = [], None
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        output = encoder(tokenize(tokenizer, prompts).to(device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        if isinstance(encoder, CLIPTextModelWithProjection):
            pooled = output.text_embeds
    return PromptEmbeds(torch.cat(hidden, dim=-1), pooled)


@torch.no_grad()
def encode_images(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Latents [B, 4, H/f, W/f] in float32 from pixels [B, 3, H, W] in [-1, 1] (posterior mean)."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latents.float()


def unet_prediction(unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: PromptEmbeds,
                    time_ids: torch.Tensor | None) -> torch.Tensor:
    """UNet output [B, C, H, W] for noisy latents [B, C, H, W], timesteps [B] and conditioning."""
    added = None
    if cond.pooled is not None:
        added = {"text_embeds": cond.pooled, "time_ids": time_ids}
    return unet(noisy_latents, timesteps, encoder_hidden_states=cond.prompt_embeds,
                added_cond_kwargs=added).sample


def build_pipeline(components: Components, unet: UNet2DConditionModel | None = None):
    """A stock diffusers SD or SDXL pipeline from the loaded components (DDIM sampler)."""
    scheduler = DDIMScheduler.from_config(components.noise_scheduler.config)
    parts = dict(vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
                 unet=unet if unet is not None else components.unet, scheduler=scheduler)
    if components.is_sdxl:
        return StableDiffusionXLPipeline(text_encoder_2=components.text_encoders[1],
                                         tokenizer_2=components.tokenizers[1], **parts)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False, **parts)
