"""The official code's argument names -> FlowConfig: constructor arguments and training YAMLs.

Official checkpoints come with the keyword arguments of the official Model constructor
(apple/ml-starflow transformer_flow.Model) or with the training YAML of its train.py.
Official features that are not implemented here are refused by name, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starflow_core.config import VAE_DOWNSAMPLE, FlowConfig, read_json_config

# ----- official argument names -------------------------------------------------------
# Constructor arguments of the official Model classes that we implement, with the
# name of our field; constructor arguments absent here but listed in
# _OFFICIAL_DEFAULT_ONLY are accepted only at their default value.
_OFFICIAL_TO_OURS = {
    "in_channels": "in_channels",
    "img_size": "img_size",
    "patch_size": "patch_size",
    "channels": "channels",
    "num_blocks": "num_blocks",
    "layers_per_block": "layers_per_block",
    "head_dim": "head_dim",
    "expansion": "expansion",
    "rope": "rope",
    "pt_seq_len": "pt_seq_len",
    "sos": "sos",
    "txt_size": "txt_size",
    "txt_dim": "txt_dim",
    "cond_top_only": "cond_top_only",
    "use_softplus": "use_softplus",
    "use_final_norm": "use_final_norm",
    "soft_clip": "soft_clip",
    "seq_order": "seq_order",
    "num_classes": "num_classes",
    "nvp": "nvp",
    "norm_type": "norm_type",
    "use_bias": "use_bias",
    "noise_std": "noise_std",
}


_OFFICIAL_DEFAULT_ONLY = {
    "num_heads": None,
    "num_kv_heads": None,
    "use_swiglu": False,
    "use_qk_norm": False,
    "use_post_norm": False,
    "hf_style_rope": False,
    "use_checkpoint": 0,
    "use_checkpoint_mlp": None,
    "use_pretrained_lm": None,
    "use_mm_attn": False,
    "learnable_self_denoiser": False,
    "conditional_denoiser": False,
    "temporal_causal": 0,
    "top_block_channels": None,
    "shallow_block_local": False,
    "denoiser_window": None,
    "local_attn_window": None,
    "use_adaln": False,
}


# Training-only settings; checkpoint loading can ignore them.
_OFFICIAL_IGNORED = {"use_checkpoint", "use_checkpoint_mlp"}


def from_official_arguments(arguments: Mapping[str, Any], family: str = "starflow") -> FlowConfig:
    """Build a FlowConfig from the keyword arguments of the official Model constructor."""
    values: dict[str, Any] = {"family": family}
    if family == "tarflow":
        values.update(seq_order="R2L", nvp=True)
    else:
        values["seq_order"] = "R2L"  # the official STARFlow constructor default
    unsupported = []
    for key, value in arguments.items():
        if key in _OFFICIAL_TO_OURS:
            values[_OFFICIAL_TO_OURS[key]] = value
        elif key in _OFFICIAL_DEFAULT_ONLY:
            default = _OFFICIAL_DEFAULT_ONLY[key]
            if key in _OFFICIAL_IGNORED or value == default or (default in (False, 0) and not value):
                continue
            if key == "num_heads" and value == arguments.get("channels", 0) // arguments.get("head_dim", 64):
                continue
            unsupported.append(f"{key}={value!r}")
        else:
            raise ValueError(
                f"unknown official constructor argument {key!r}; known: "
                f"{sorted(set(_OFFICIAL_TO_OURS) | set(_OFFICIAL_DEFAULT_ONLY))}"
            )
    if unsupported:
        raise ValueError(
            "this checkpoint uses official features not implemented here: " + ", ".join(unsupported)
        )
    for key in ("rope", "sos", "cond_top_only", "use_softplus", "use_final_norm", "nvp", "use_bias"):
        if key in values:
            values[key] = bool(values[key])
    if "soft_clip" in values:
        values["soft_clip"] = float(values["soft_clip"])
    return FlowConfig(**values)


# Hidden sizes of text encoders named in official YAMLs (`text:`), to derive txt_dim.
TEXT_ENCODER_WIDTH = {
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
    "google/flan-t5-xl": 2048,
    "google/flan-t5-xxl": 4096,
}


# Official train.py argument -> our field, for model-defining keys of the YAML.
_YAML_TO_OURS = {
    "channel_size": "in_channels",
    "img_size": "img_size",
    "patch_size": "patch_size",
    "channels": "channels",
    "blocks": "num_blocks",
    "layers_per_block": "layers_per_block",
    "head_dim": "head_dim",
    "rope": "rope",
    "pt_seq_len": "pt_seq_len",
    "sos": "sos",
    "txt_size": "txt_size",
    "cond_top_only": "cond_top_only",
    "use_softplus": "use_softplus",
    "use_final_norm": "use_final_norm",
    "soft_clip": "soft_clip",
    "seq_order": "seq_order",
    "nvp": "nvp",
    "norm_type": "norm_type",
    "use_bias": "use_bias",
    "noise_std": "noise_std",
}


# official train.py defaults for the keys above that the YAML may omit
_YAML_DEFAULTS = {
    "channel_size": 3,
    "img_size": 32,
    "patch_size": 4,
    "channels": 512,
    "blocks": 4,
    "layers_per_block": 8,
    "head_dim": 64,
    "rope": 0,
    "pt_seq_len": None,
    "sos": 0,
    "txt_size": 0,
    "cond_top_only": 0,
    "use_softplus": 0,
    "use_final_norm": 0,
    "soft_clip": 0.0,
    "seq_order": "R2L",
    "nvp": 1,
    "norm_type": "layer_norm",
    "use_bias": 1,
    "noise_std": 0.3,
}


# Model-shaping train.py arguments we do not implement: accepted at their defaults only.
_YAML_DEFAULT_ONLY = {
    "adaln": 0,
    "num_heads": None,
    "num_kv_heads": None,
    "use_swiglu": 0,
    "use_qk_norm": 0,
    "use_post_norm": 0,
    "use_pretrained_lm": None,
    "use_mm_attn": 0,
    "learnable_self_denoiser": 0,
    "temporal_causal": 0,
    "top_block_channels": None,
    "shallow_block_local": 0,
    "local_attn_window": None,
    "vid_size": None,
}


# Training / data / logging arguments of official train.py that do not shape the model.
_YAML_TRAINING_KEYS = {
    "no_flip",
    "fsdp",
    "fsdp_text_encoder",
    "batch_size",
    "lr",
    "min_lr",
    "wds",
    "gradient_checkpoint",
    "gradient_checkpoint_mlp",
    "vae",
    "text",
    "cfg",
    "drop_label",
    "drop_image",
    "sample_freq",
    "latent_norm_regularization",
    "noise_type",
    "epochs",
    "epoch_length",
    "acc",
    "dataset",
    "data",
    "logdir",
    "mix_aspect",
    "caption_column",
    "train_seed",
    "warmup_steps",
    "compile",
    "fp8",
    "use_8bit_adam",
    "resume_path",
    "resume_epoch",
    "finetuned_vae",
    "vae_decoder_factor",
    "secondary_dataset",
    "secondary_img_size",
    "secondary_vid_size",
    "secondary_batch_size",
    "secondary_ratio",
    "fps_cond",
    "last_frame_cond",
    "video_to_video",
    "loss_scaling",
    "cond_noise_level",
    "conditional_denoiser",
    "noise_embed_denoiser",
    "denoiser_window",
    "model_config_path",
    "save_freq",
    "log_freq",
    "eval_freq",
    "seed",
}


def _parse_yaml_arguments(path: Path) -> dict[str, Any]:
    import yaml

    document = yaml.safe_load(path.read_text())
    entries = document.get("arguments", document) if isinstance(document, dict) else document
    values: dict[str, Any] = {}
    if isinstance(entries, list):
        for entry in entries:
            values.update(entry)
    elif isinstance(entries, dict):
        values.update(entries)
    else:
        raise ValueError(f"{path}: expected an 'arguments:' list of key: value entries")
    return values


def from_official_yaml(path: str | Path, txt_dim: int | None = None) -> FlowConfig:
    """Read an official training YAML (configs/*.yaml of apple/ml-starflow).

    Keys the YAML omits take the official train.py defaults (SPEC section 4). The
    text width txt_dim is derived from the named text encoder unless given.
    """
    path = Path(path)
    raw = _parse_yaml_arguments(path)
    unknown = sorted(set(raw) - set(_YAML_TO_OURS) - set(_YAML_DEFAULT_ONLY) - _YAML_TRAINING_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown official arguments {unknown}")
    unsupported = [
        f"{key}={raw[key]!r}"
        for key, default in _YAML_DEFAULT_ONLY.items()
        if key in raw and raw[key] != default
    ]
    if unsupported:
        raise ValueError(f"{path}: official features not implemented here: {', '.join(unsupported)}")
    merged = {**_YAML_DEFAULTS, **{k: v for k, v in raw.items() if k in _YAML_TO_OURS}}
    values = {_YAML_TO_OURS[k]: v for k, v in merged.items()}
    layers = values["layers_per_block"]
    if isinstance(layers, str):
        layers = [int(n) for n in layers.split()]
    values["layers_per_block"] = tuple(layers) if isinstance(layers, list | tuple) else (int(layers),)
    for key in ("rope", "sos", "cond_top_only", "use_softplus", "use_final_norm", "nvp", "use_bias"):
        values[key] = bool(values[key])
    values["soft_clip"] = float(values["soft_clip"])
    values["noise_std"] = float(values["noise_std"])
    if raw.get("vae"):  # the YAML gives the pixel size; the flow runs on VAE latents (downsample 8)
        values["img_size"] = int(values["img_size"]) // VAE_DOWNSAMPLE
    if values["txt_size"] > 0:
        if txt_dim is None:
            encoder = raw.get("text")
            if encoder not in TEXT_ENCODER_WIDTH:
                raise ValueError(f"{path}: cannot derive txt_dim for text encoder {encoder!r}; pass txt_dim")
            txt_dim = TEXT_ENCODER_WIDTH[encoder]
        values["txt_dim"] = txt_dim
    return FlowConfig(family="starflow", **values)


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
