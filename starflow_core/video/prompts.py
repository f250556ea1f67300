"""The prompt templates of the official video models (utils/common.py `preprocess_text`).

A model trained with `fps_cond`, `cond_noise_level` or `mix_aspect` saw every caption wrapped
in a few fixed lines, and it expects the same wrapping at sampling time, the empty prompt of
classifier-free guidance included (the official sample.py appends "" to the captions before
wrapping them all). The wrapping, in the official order:

    fps_cond          "A video with {fps} fps:\\n{prompt}\\n"  ("An image:\\n{prompt}\\n" for fps <= 0)
    cond_noise_level  "Noise Level {int(noise_std * 1000)}:\\n" in front (truncated, not rounded,
                      as the official int() does: 0.4999 gives 499)
    mix_aspect        "{text}\\n in a {aspect_ratio} aspect ratio.\\n" after
    chat template     only for decoder-only text models (the official Gemma path), never for T5

`TemplateFlags` holds the three flags of a model (its YAML arguments); `wrap_prompts` applies
them with what a sampling or training call knows. What the official scripts pass: sampling
(sample.py) the requested output fps, the noise level `target_noise_std or noise_std` (the
YAML's noise_std, 0.5 for the 7B) and the requested aspect ratio; the learned denoiser's pass
(utils/inference.py `process_denoising`) encodes the captions alone (no guidance prompt) with
the same arguments, the noise level being the one it removes, the same value; training
(train.py) each clip's fps and each sample's noise level, and the batch's aspect-ratio bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

CHAT_TEMPLATE = (
    "<start_of_turn>user\nPlease generate {mode} about: {prompt}<end_of_turn>\n<start_of_turn>model\n"
)


@dataclasses.dataclass(frozen=True)
class TemplateFlags:
    """Which parts of the official template a model was trained with (YAML arguments)."""

    fps_cond: bool = False
    cond_noise_level: bool = False
    mix_aspect: bool = False

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> TemplateFlags:
        """The flags of an official YAML's arguments (0/1 or booleans; missing means off)."""
        values = {}
        for field in dataclasses.fields(cls):
            value = arguments.get(field.name, 0)
            if value not in (0, 1, True, False):
                raise ValueError(f"{field.name} must be 0 or 1, got {value!r}")
            values[field.name] = bool(value)
        return cls(**values)

    @property
    def any(self) -> bool:
        return self.fps_cond or self.cond_noise_level or self.mix_aspect


def noise_level_number(noise_std: float) -> int:
    """The number the official template writes for a noise level: int(noise_std * 1000)."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)):
        raise ValueError(f"the noise level must be a number, got {noise_std!r}")
    return int(float(noise_std) * 1000)


def wrap_prompt(
    prompt: str,
    *,
    fps: int | None = None,
    noise_std: float | None = None,
    aspect_ratio: str | None = None,
    chat_template: bool = False,
) -> str:
    """One prompt as the official `preprocess_text` wraps it; None leaves that part out."""
    mode = "an image"
    text = prompt
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, int):
            raise ValueError(f"fps must be a whole number, got {fps!r}")
        mode = "a video" if fps > 0 else "an image"
        text = f"A video with {fps} fps:\n{text}\n" if fps > 0 else f"An image:\n{text}\n"
    if noise_std is not None:
        text = f"Noise Level {noise_level_number(noise_std)}:\n{text}"
    if aspect_ratio is not None:
        text = f"{text}\n in a {aspect_ratio} aspect ratio.\n"
    if chat_template:
        text = CHAT_TEMPLATE.format(mode=mode, prompt=text)
    return text


def wrap_prompts(
    prompts: Sequence[str],
    flags: TemplateFlags,
    *,
    fps: int | Sequence[int] | None = None,
    noise_std: float | Sequence[float] | None = None,
    aspect_ratio: str | None = None,
    chat_template: bool = False,
) -> list[str]:
    """Prompts as a model with `flags` saw them: the fps, noise level and aspect ratio enter
    only when the model's flag is on (as the official sample.py and train.py pass them), and
    each must be given then. `fps` and `noise_std` are one value for every prompt or one per
    prompt (a training batch: each clip's rate, each sample's noise level)."""
    needed = {
        "fps": (flags.fps_cond, fps),
        "noise_std": (flags.cond_noise_level, noise_std),
        "aspect_ratio": (flags.mix_aspect, aspect_ratio),
    }
    missing = [name for name, (on, value) in needed.items() if on and value is None]
    if missing:
        raise ValueError(f"this model's prompt template needs {', '.join(missing)}; give a value")
    rates = _per_prompt(fps if flags.fps_cond else None, len(prompts), "fps")
    levels = _per_prompt(noise_std if flags.cond_noise_level else None, len(prompts), "noise_std")
    return [
        wrap_prompt(
            prompt,
            fps=rate,
            noise_std=level,
            aspect_ratio=aspect_ratio if flags.mix_aspect else None,
            chat_template=chat_template,
        )
        for prompt, rate, level in zip(prompts, rates, levels, strict=True)
    ]


def _per_prompt(value: Any, count: int, name: str) -> list:
    """One value per prompt from a single value (or None) or a sequence of `count` values."""
    if value is None or isinstance(value, (int, float)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{len(values)} {name} values for {count} prompts; give one, or one per prompt")
    return values
