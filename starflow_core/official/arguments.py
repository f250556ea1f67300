"""The official code's argument names -> FlowConfig: constructor arguments and training YAMLs.

Our field names are the official Model constructor's (apple/ml-starflow
transformer_flow.Model), so a constructor argument that names a FlowConfig field is
taken as it is. The training YAML holds flags of the official train.py parser; two of
them are renamed (`YAML_RENAMES`), txt_dim comes from the named text encoder and the
latent img_size from the VAE. Every other official name is known and is either
ignored (training settings, and options the official code itself never uses) or, if
it changes what the model computes and is not implemented here, refused by name unless
it is at its default. Unknown names are an error, not silently dropped.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starflow_core.config import VAE_DOWNSAMPLE, FlowConfig, read_json_config
from starflow_core.validation import expect, load_yaml, read_text

# FlowConfig fields that official configurations can set (ours only: family, quantization).
FLOW_FIELDS = frozenset(f.name for f in dataclasses.fields(FlowConfig)) - {"family", "quantization"}

# Official options that change what the model computes and are not implemented here:
# name -> (default, what it is). Accepted only at the default.
NOT_IMPLEMENTED = {
    "use_pretrained_lm": (None, "a pretrained language model (Gemma) as the deep block"),
}

# Official Model arguments that are not FlowConfig fields and change nothing computed here:
# gradient checkpointing (training), use_mm_attn (only read with use_pretrained_lm) and
# noise_embed_denoiser (the official Model swallows it in **unused_kwargs: no module reads it).
CONSTRUCTOR_IGNORED = frozenset(
    {"use_checkpoint", "use_checkpoint_mlp", "use_mm_attn", "noise_embed_denoiser"}
)

# Settings only the learned self-denoiser reads: without it the official Model ignores them.
DENOISER_SETTINGS = {"conditional_denoiser": False, "denoiser_window": None}

# The only STARFlow MLP width: the official Model has no expansion argument (it would land
# in **unused_kwargs), so its blocks always use the MetaBlock default.
OFFICIAL_STARFLOW_EXPANSION = 4


def _is_default(value: Any, default: Any) -> bool:
    return value == default or (not value and not default)  # 0, False and None are all "off"


def _not_implemented(values: Mapping[str, Any]) -> list[str]:
    """`name=value (what)` for every not-implemented option that is switched on."""
    refused = []
    for name, (default, what) in NOT_IMPLEMENTED.items():
        value = values.get(name, default)
        if _is_default(value, default):
            continue
        refused.append(f"{name}={value!r} ({what})")
    return refused


def from_official_arguments(arguments: Mapping[str, Any], family: str = "starflow") -> FlowConfig:
    """Build a FlowConfig from the keyword arguments of the official Model constructor."""
    unknown = sorted(set(arguments) - FLOW_FIELDS - CONSTRUCTOR_IGNORED - set(NOT_IMPLEMENTED))
    if unknown:
        raise ValueError(
            f"unknown official constructor arguments {unknown}; known: "
            f"{sorted(FLOW_FIELDS | CONSTRUCTOR_IGNORED | set(NOT_IMPLEMENTED))}"
        )
    refused = _not_implemented(arguments)
    if refused:
        raise ValueError("this checkpoint uses official features not implemented here: " + ", ".join(refused))
    expansion = arguments.get("expansion", OFFICIAL_STARFLOW_EXPANSION)
    if family == "starflow" and expansion != OFFICIAL_STARFLOW_EXPANSION:
        raise ValueError(
            f"expansion={expansion!r}: the official STARFlow Model takes no expansion argument and always "
            f"builds {OFFICIAL_STARFLOW_EXPANSION}x MLPs; drop it (or write our config.json instead)"
        )
    values = {name: arguments[name] for name in FLOW_FIELDS & set(arguments)}
    return FlowConfig(family=family, **_normalised_video_options(values))


def _normalised_video_options(values: dict[str, Any]) -> dict[str, Any]:
    """Drop settings the official Model reads as no change: the denoiser's settings without a
    denoiser, and a top_block_channels equal to channels."""
    if not values.get("learnable_self_denoiser"):
        values = {**values, **DENOISER_SETTINGS}
    elif not values.get("txt_dim"):
        values = {**values, "conditional_denoiser": False}  # the official denoiser then gets txt_dim 0
    if values.get("top_block_channels") == values.get("channels", FlowConfig.channels):
        values = {**values, "top_block_channels": None}
    return values


# Hidden sizes of text encoders named in official YAMLs (`text:`), to derive txt_dim.
TEXT_ENCODER_WIDTH = {
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
    "google/flan-t5-xl": 2048,
    "google/flan-t5-xxl": 4096,
}


# ----- the official train.py parser ------------------------------------------------------
# Flags whose names differ from the FlowConfig field they set.
YAML_RENAMES = {"channel_size": "in_channels", "blocks": "num_blocks"}

# Flags that set FlowConfig fields, with the parser's defaults (they apply to keys a YAML omits).
TRAIN_PARSER_MODEL_DEFAULTS = {
    "channel_size": 3,
    "img_size": 32,
    "patch_size": 4,
    "channels": 512,
    "blocks": 4,
    "layers_per_block": 8,
    "head_dim": 64,
    "num_heads": None,
    "num_kv_heads": None,
    "rope": 0,
    "pt_seq_len": None,
    "sos": 0,
    "txt_size": 0,
    "cond_top_only": 0,
    "use_softplus": 0,
    "use_swiglu": 0,
    "use_qk_norm": 0,
    "use_post_norm": 0,
    "use_final_norm": 0,
    "use_bias": 1,
    "norm_type": "layer_norm",
    "soft_clip": 0.0,
    "seq_order": "R2L",
    "noise_std": 0.3,
    "temporal_causal": 0,
    "shallow_block_local": 0,
    "top_block_channels": None,
    "local_attn_window": None,
    "learnable_self_denoiser": 0,
    "conditional_denoiser": 0,
    "denoiser_window": None,
}

# Flags the official train.py never passes to the model: accepted, with a note when set.
TRAIN_PARSER_UNUSED_MODEL_FLAGS = {
    "adaln": (0, "the official train.py never passes adaln to the model, which builds no adaLN"),
    "nvp": (1, "the official train.py never passes nvp to the model: STARFlow predicts shift and scale"),
    "noise_embed_denoiser": (0, "the official Model accepts noise_embed_denoiser but no module reads it"),
}

# Flags of video training YAMLs that shape the data and the prompts, not the flow: kept for
# the pipeline in OfficialVideoSettings (read_official_video_settings), with their defaults.
VIDEO_PIPELINE_FLAGS = {"vid_size": None, "fps_cond": 0, "cond_noise_level": 0, "mix_aspect": 0}

# Every other flag of the official train.py parser: data, optimisation, logging, sampling
# and decoding settings, and options read only by features refused above (NOT_IMPLEMENTED).
TRAIN_PARSER_OTHER_FLAGS = frozenset(
    {
        "model_config_path", "train_seed", "data", "logdir", "dataset", "wds", "no_flip",
        "caption_column", "secondary_dataset", "secondary_img_size", "secondary_vid_size", "vae",
        "vae_decoder_factor", "finetuned_vae", "text", "use_mm_attn", "noise_type", "batch_size", "secondary_batch_size",
        "secondary_ratio", "acc", "fp8", "use_8bit_adam", "epochs", "epoch_length", "lr", "min_lr",
        "drop_label", "drop_image", "last_frame_cond", "video_to_video", "resume_path", "resume_epoch",
        "warmup_steps", "fsdp", "fsdp_text_encoder", "gradient_checkpoint", "gradient_checkpoint_mlp",
        "compile", "latent_norm_regularization", "loss_scaling", "grad_clip", "grad_skip", "dry_run",
        "wandb_name", "save_every", "sample_freq", "cfg", "num_samples", "sample_batch_size",
    }
)  # fmt: skip

TRAIN_PARSER_FLAGS = (
    set(TRAIN_PARSER_MODEL_DEFAULTS)
    | set(TRAIN_PARSER_UNUSED_MODEL_FLAGS)
    | set(NOT_IMPLEMENTED)
    | set(VIDEO_PIPELINE_FLAGS)
    | TRAIN_PARSER_OTHER_FLAGS
)


def _parse_yaml_arguments(path: Path) -> dict[str, Any]:
    fix = "give an official configs/*.yaml of apple/ml-starflow (an 'arguments:' list of key: value entries)"
    document = load_yaml(read_text(path, "the official config"), str(path), fix)
    entries = document.get("arguments", document) if isinstance(document, dict) else document
    values: dict[str, Any] = {}
    if isinstance(entries, list):
        for number, entry in enumerate(entries, start=1):
            values.update(expect(entry, "object", f"{path}: argument entry {number}", fix))
    elif isinstance(entries, dict):
        values.update(entries)
    else:
        raise ValueError(f"{path}: expected an 'arguments:' list of key: value entries")
    not_named = [key for key in values if not isinstance(key, str)]
    if not_named:
        raise ValueError(f"{path}: argument names must be strings, not {not_named}; {fix}")
    return values


def _layer_counts(value: Any) -> tuple[int, ...]:
    """The parser's `layers_per_block` (nargs='*'): "2 2 24", [2, 2, 24] or 8."""
    if isinstance(value, str):
        return tuple(int(n) for n in value.split())
    if isinstance(value, list | tuple):
        return tuple(int(n) for n in value)
    return (int(value),)


def from_official_yaml(path: str | Path, txt_dim: int | None = None) -> FlowConfig:
    """Read an official training YAML (configs/*.yaml of apple/ml-starflow).

    Keys the YAML omits take the official train.py defaults (SPEC section 4). The
    text width txt_dim is derived from the named text encoder unless given.
    """
    path = Path(path)
    raw = _parse_yaml_arguments(path)
    unknown = sorted(set(raw) - TRAIN_PARSER_FLAGS)
    if unknown:
        raise ValueError(f"{path}: unknown official arguments {unknown} (not flags of the official train.py)")
    refused = _not_implemented({**TRAIN_PARSER_MODEL_DEFAULTS, **raw})
    if refused:
        raise ValueError(f"{path}: official features not implemented here: {', '.join(refused)}")
    for name, (default, note) in TRAIN_PARSER_UNUSED_MODEL_FLAGS.items():
        if name in raw and not _is_default(raw[name], default):
            warnings.warn(f"{path}: {name}={raw[name]!r} ignored: {note}", stacklevel=2)

    flags = {
        **TRAIN_PARSER_MODEL_DEFAULTS,
        **{k: v for k, v in raw.items() if k in TRAIN_PARSER_MODEL_DEFAULTS},
    }
    values = {YAML_RENAMES.get(name, name): value for name, value in flags.items()}
    layers = _layer_counts(values["layers_per_block"])
    values["layers_per_block"] = layers
    if len(layers) > 1:  # the official train.py takes the block count from the list
        values["num_blocks"] = len(layers)
    if raw.get("vae"):  # the YAML gives the pixel size; the flow runs on VAE latents
        values["img_size"] = int(values["img_size"]) // vae_downsample(raw["vae"])
    if values["txt_size"] > 0:
        if txt_dim is None:
            encoder = raw.get("text")
            if encoder not in TEXT_ENCODER_WIDTH:
                raise ValueError(f"{path}: cannot derive txt_dim for text encoder {encoder!r}; pass txt_dim")
            txt_dim = TEXT_ENCODER_WIDTH[encoder]
        values["txt_dim"] = txt_dim
    return FlowConfig(family="starflow", **_normalised_video_options(values))


def vae_downsample(vae: str) -> int:
    """Spatial downsampling of the VAE an official YAML names (`vae:`, maybe with a `:scale`
    suffix): 16 for Wan2.2 (official utils/model_setup.py), 8 for Wan2.1 and SD-VAEs."""
    return WAN22_DOWNSAMPLE if "Wan-AI/Wan2.2" in str(vae) else VAE_DOWNSAMPLE


WAN22_DOWNSAMPLE = 16


@dataclasses.dataclass(frozen=True)
class OfficialVideoSettings:
    """The video data and prompt settings of an official YAML, kept for the video pipeline.

    num_frames and fps come from `vid_size: 'frames:fps'`; fps_cond, cond_noise_level and
    mix_aspect switch on the prompt templates (official utils/common.py preprocess_text);
    temporal_scale is the `:scale` suffix of the VAE name (latents of every frame after the
    first are multiplied by it).
    """

    num_frames: int
    fps: int
    fps_cond: bool
    cond_noise_level: bool
    mix_aspect: bool
    vae: str
    temporal_scale: float

    def template_flags(self):
        """The prompt template these settings call for (starflow_core.video.prompts)."""
        from starflow_core.video.prompts import TemplateFlags

        return TemplateFlags(self.fps_cond, self.cond_noise_level, self.mix_aspect)


def read_official_video_settings(path: str | Path) -> OfficialVideoSettings | None:
    """The video settings of an official YAML, or None for an image YAML (no vid_size)."""
    path = Path(path)
    raw = {**VIDEO_PIPELINE_FLAGS, **_parse_yaml_arguments(path)}
    if raw["vid_size"] is None:
        return None
    try:
        num_frames, fps = (int(part) for part in str(raw["vid_size"]).split(":")[:2])
    except ValueError:
        raise ValueError(
            f"{path}: vid_size={raw['vid_size']!r} must read 'frames:fps', e.g. '81:16'"
        ) from None
    vae, _, scale = str(raw.get("vae") or "").partition(":")
    return OfficialVideoSettings(
        num_frames=num_frames,
        fps=fps,
        fps_cond=bool(raw["fps_cond"]),
        cond_noise_level=bool(raw["cond_noise_level"]),
        mix_aspect=bool(raw["mix_aspect"]),
        vae=vae,
        temporal_scale=float(scale) if scale else 1.0,
    )


def resolve_config(config: FlowConfig | Mapping[str, Any] | str | Path) -> FlowConfig:
    """A FlowConfig from itself, a dict or a JSON file: ours, or the official constructor
    arguments as {"family": ..., "constructor": {...}}."""
    if isinstance(config, FlowConfig):
        return config
    if isinstance(config, str | Path):
        config = read_json_config(config)
    if isinstance(config, Mapping):
        if "constructor" in config:
            return from_official_arguments(config["constructor"], family=config.get("family", "starflow"))
        return FlowConfig.from_dict(config)
    raise TypeError(f"config must be a FlowConfig, dict or path, got {type(config).__name__}")
