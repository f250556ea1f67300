"""Checkpoint key tables: every difference between official and our weight names lives here.

Our attribute paths are the official ones, so converting an official state_dict is
identity on names, minus buffers that carry no information. Checking is strict:
missing and mis-shaped tensors are errors listing every name; unexpected ones are
skipped with a warning listing them (an error when strict).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping

# Buffers of the official STARFlow Model that carry no information (SPEC section 2):
# `var` (a constant ones prior), causal masks, and zero-filled RoPE tables.
DEPRECATED_STARFLOW_KEYS = (
    re.compile(r"^var$"),
    re.compile(r"^blocks\.\d+\.attn_mask$"),
    re.compile(r"^feat_rope(_gen)?\.freqs_(cos|sin)$"),
)
# TARFlow keeps `var` (its prior variance, used to scale sampling noise); only masks go.
DEPRECATED_TARFLOW_KEYS = (re.compile(r"^blocks\.\d+\.attn_mask$"),)


def deprecated_patterns(family: str) -> tuple[re.Pattern, ...]:
    return DEPRECATED_TARFLOW_KEYS if family == "tarflow" else DEPRECATED_STARFLOW_KEYS


def is_deprecated(name: str, family: str) -> bool:
    return any(p.match(name) for p in deprecated_patterns(family))


def split_deprecated(names: Iterable[str], family: str) -> tuple[list[str], list[str]]:
    """Split official names into (kept, dropped)."""
    kept, dropped = [], []
    for name in names:
        (dropped if is_deprecated(name, family) else kept).append(name)
    return kept, dropped


def official_to_ours(name: str) -> str:
    """Name of an official tensor in our modules (identity: we keep the official paths)."""
    return name


class CheckpointMismatchError(ValueError):
    """The weights do not fit the model: lists every missing, unexpected and mis-shaped name."""


class UnexpectedTensorsWarning(UserWarning):
    """A checkpoint carries tensors the model does not use; they were skipped."""


def check_weights(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    source: str,
    strict: bool = False,
) -> list[str]:
    """Check `found` against `expected`; return the unexpected names (sorted), which the caller skips.

    Missing and mis-shaped tensors raise CheckpointMismatchError naming each of them. Unexpected
    tensors give an UnexpectedTensorsWarning listing them (the official sampler loads with
    strict=False, so a released file may carry tensors the model never reads); strict=True makes
    them an error too.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        f"{name}: checkpoint {tuple(found[name])} vs model {tuple(expected[name])}"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name]) != tuple(expected[name])
    ]
    if not (missing or mis_shaped or (strict and unexpected)):
        if unexpected:
            warnings.warn(
                f"{source} holds {len(unexpected)} tensor(s) the model does not use, skipped: "
                + ", ".join(unexpected)
                + " (pass --strict / strict=True to refuse such files)",
                UnexpectedTensorsWarning,
                stacklevel=2,
            )
        return unexpected
    lines = [f"weights in {source} do not match the model configuration:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if mis_shaped:
        lines.append(f"  wrong shape ({len(mis_shaped)}): " + "; ".join(mis_shaped))
    lines.append("  check that config.json belongs to these weights (channels, blocks, layers, text width).")
    raise CheckpointMismatchError("\n".join(lines))


# ----- SD-VAE weights ------------------------------------------------------------------
# Official STARFlow fine-tuned VAE checkpoints wrap the diffusers modules in two
# Sequentials: encoder = (encoder, quant_conv), decoder = (post_quant_conv, decoder).
OFFICIAL_VAE_PREFIXES = {
    "encoder.0.": "encoder.",
    "encoder.1.": "quant_conv.",
    "decoder.0.": "post_quant_conv.",
    "decoder.1.": "decoder.",
}
# Attention parameter names of checkpoints saved by old diffusers versions
# (e.g. stabilityai/sd-vae-ft-ema) -> current names.
DEPRECATED_VAE_ATTENTION_NAMES = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}


def vae_key_to_diffusers(key: str) -> str:
    """Official fine-tuned or old-diffusers VAE weight name -> the current diffusers name."""
    for official_prefix, diffusers_prefix in OFFICIAL_VAE_PREFIXES.items():
        if key.startswith(official_prefix):
            key = diffusers_prefix + key[len(official_prefix) :]
            break
    parts = key.split(".")
    if "attentions" in parts and len(parts) >= 2 and parts[-2] in DEPRECATED_VAE_ATTENTION_NAMES:
        parts[-2] = DEPRECATED_VAE_ATTENTION_NAMES[parts[-2]]
    return ".".join(parts)
