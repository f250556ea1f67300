"""Wan2.2 VAE weight names: the original ``Wan2.2_VAE.pth`` naming (the Wan team's ``WanVAE_``,
which the official STARFlow-V code loads) -> diffusers' ``AutoencoderKLWan`` naming, which both
twins use as their attribute paths. Every rename lives in the table below.

The original wraps layers in ``nn.Sequential``s, so its names carry positions: a residual block
is ``residual.{0: norm, 2: conv, 3: norm, 6: conv}`` (SiLU and dropout hold no weights), a
middle block ``middle.{0: resnet, 1: attention, 2: resnet}``, a head ``head.{0: norm, 2: conv}``.
A down (up) block lists its residual blocks then its resampler under one ``downsamples``
(``upsamples``) Sequential; the resampler is the entry holding ``resample`` / ``time_conv``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .keys import CheckpointMismatchError

# (pattern on the original name, diffusers replacement), applied in order, first match wins.
ORIGINAL_TO_DIFFUSERS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^conv1\.", "quant_conv."),
        (r"^conv2\.", "post_quant_conv."),
        (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
        (r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out."),
        (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
        (r"^(encoder|decoder)\.middle\.0\.", r"\1.mid_block.resnets.0."),
        (r"^(encoder|decoder)\.middle\.1\.", r"\1.mid_block.attentions.0."),
        (r"^(encoder|decoder)\.middle\.2\.", r"\1.mid_block.resnets.1."),
        (
            r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)\.",
            r"encoder.down_blocks.\1.downsampler.\2.",
        ),
        (r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (
            r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)\.",
            r"decoder.up_blocks.\1.upsampler.\2.",
        ),
        (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    )
)
# Inside a residual block (after the block-level rename above).
RESIDUAL_LAYERS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\.residual\.0\.gamma$", ".norm1.gamma"),
        (r"\.residual\.2\.", ".conv1."),
        (r"\.residual\.3\.gamma$", ".norm2.gamma"),
        (r"\.residual\.6\.", ".conv2."),
        (r"\.shortcut\.", ".conv_shortcut."),
    )
)


def wan_vae_original_to_diffusers(name: str) -> str:
    """One original ``Wan2.2_VAE.pth`` tensor name -> its diffusers ``AutoencoderKLWan`` name.

    Names the table does not know are returned unchanged, so the key check reports them as
    unexpected by their own name."""
    for pattern, replacement in ORIGINAL_TO_DIFFUSERS:
        if pattern.search(name):
            name = pattern.sub(replacement, name, count=1)
            break
    for pattern, replacement in RESIDUAL_LAYERS:
        if pattern.search(name):
            return pattern.sub(replacement, name, count=1)
    return name


def rename_original(names: Iterable[str]) -> dict[str, str]:
    """{original name: diffusers name}; two originals landing on one name is an error."""
    renamed: dict[str, str] = {}
    for name in names:
        renamed[name] = wan_vae_original_to_diffusers(name)
    targets = list(renamed.values())
    clashes = sorted({target for target in targets if targets.count(target) > 1})
    if clashes:
        raise CheckpointMismatchError(f"these original Wan VAE names map onto one name twice: {clashes}")
    return renamed


def check_wan_vae_weights(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor.

    Shapes are in torch layout (the files' own); a VAE file carrying tensors the model does
    not read is refused, as diffusers refuses it: it belongs to another configuration."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        f"{name}: file {tuple(found[name])} vs model {tuple(expected[name])}"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name]) != tuple(expected[name])
    ]
    if not (missing or unexpected or mis_shaped):
        return
    lines = [f"Wan VAE weights in {source} do not match the configuration:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if mis_shaped:
        lines.append(f"  wrong shape ({len(mis_shaped)}): " + "; ".join(mis_shaped))
    lines.append(
        "  check that the config (base_dim, decoder_base_dim, z_dim, dim_mult) belongs to these weights."
    )
    raise CheckpointMismatchError("\n".join(lines))
