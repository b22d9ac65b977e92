"""diffusers pipeline extensions, installed as ``diffalign.pipelines``.

Trajectory-recording and gradient-window subclasses of the SD / SDXL pipelines (D3PO, DRaFT,
AlignProp, ReFL) live here; Diffusion-DPO trains with stock pipelines and needs none, and its
LoRA output loads into a stock pipeline with ``pipe.load_lora_weights``.
"""

__all__: list[str] = []
