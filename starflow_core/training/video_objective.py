"""The video parts of the official training objective (train.py), framework-free.

Per micro-step, on top of the image objective (starflow_{mlx,torch}.training.objective):

- first-frame dropout (`drop_image`): with probability drop_image the whole micro-batch
  loses its first frame after the noise is added, and captions get the prefix "(extend) ",
  so the model also learns videos that continue rather than start (image-to-video and
  extension); label-conditioned models keep their label. The draw is seeded by
  (seed, micro-step) here, so both twins, every process and a resumed run agree.
- the learned self-denoiser's loss: the target is the score of the noisy input,
  s = d loss / d x * numel(x) * noise_std (official: `x.grad * x.numel() * noise_std`,
  "roughly std=1"), taken from the gradient of the loss the flow minimises (regulariser
  included), and the denoiser regresses it: mean((denoiser(x, y) - s)^2). The denoiser
  trains with its own AdamW (official: lr 1e-4 down to 1e-6 on the flow's cosine schedule,
  torch's default betas, weight decay 1e-4, its own gradient clipping); the flow's optimizer
  leaves its weights alone.
- the prompt templates of captioned data (train.fps_cond, cond_noise_level, mix_aspect, as the
  official encode_text applies them): each caption, "(extend) " prefix and condition dropout
  included (a dropped caption is wrapped as the empty prompt), wrapped with its clip's frame
  rate (0 for images: "An image:"), the training noise level and the batch's aspect-ratio
  bucket; with cond_noise_level the flow loss is also weighted by noise_std / 0.3.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from starflow_core.video.prompts import TemplateFlags, wrap_prompts

EXTEND_PREFIX = "(extend) "  # official train.py, captions of clips without their first frame
DENOISER_BETAS = (0.9, 0.999)  # official: torch.optim.AdamW defaults for the denoiser
DENOISER_WEIGHT_DECAY = 1e-4
DENOISER_KEY = "learnable_self_denoiser"  # the denoiser's parameters (official key prefix)
NOISE_LEVEL_REFERENCE = 0.3  # official train.py: weights = noise_std / 0.3 with cond_noise_level


def drops_first_frame(seed: int, micro_step: int, prob: float) -> bool:
    """Whether micro-step `micro_step` trains without the clips' first frame (official drop_image)."""
    if prob <= 0:
        return False
    return random.Random(f"{seed}:{micro_step}:drop first frame").random() < prob


def extend_captions(texts: list[str]) -> list[str]:
    """Captions of clips that lost their first frame (before condition dropout, as official)."""
    return [EXTEND_PREFIX + text for text in texts]


def is_denoiser_parameter(name: str) -> bool:
    return name == DENOISER_KEY or name.startswith(DENOISER_KEY + ".")


def check_video_run(config, train) -> None:
    """Raise a ValueError naming the fix when a run's clips cannot train its model
    (FlowConfig, TrainConfig with num_frames >= 1)."""
    from starflow_core.training.config import conditioning_of

    config.check_video(train.num_frames)
    if config.in_channels not in (1, 3):
        raise ValueError(
            f"train.num_frames={train.num_frames} reads clips as pixels, but the model takes "
            f"{config.in_channels}-channel latents; train a 1- or 3-channel model on clips"
        )
    if conditioning_of(config) == "text" and train.text_encoder is None:
        raise ValueError("a captioned clip folder for a text model needs train.text_encoder (a T5 folder)")


def loss_weight(train, noise_std: float) -> float:
    """The official loss weight: noise_std / 0.3 with cond_noise_level, else 1."""
    return noise_std / NOISE_LEVEL_REFERENCE if train.cond_noise_level else 1.0


def training_prompts(
    texts: Sequence[str],
    dropped: Sequence[bool],
    extend: bool,
    train,
    noise_std: float,
    fps: Sequence[int] | None,
    aspect_ratio: str,
) -> list[str]:
    """The prompts a micro-batch's captions become (official train.py, then encode_text):
    "(extend) " when the first frame was dropped, "" where the condition is dropped, then the
    templates the run's flags switch on. fps None (images): 0, the official "An image:"."""
    texts = extend_captions(list(texts)) if extend else list(texts)
    prompts = ["" if drop else text for text, drop in zip(texts, dropped, strict=True)]
    flags = TemplateFlags(train.fps_cond, train.cond_noise_level, train.mix_aspect)
    if not flags.any:
        return prompts
    rates = [int(rate) for rate in fps] if fps is not None else 0
    return wrap_prompts(prompts, flags, fps=rates, noise_std=noise_std, aspect_ratio=aspect_ratio)
