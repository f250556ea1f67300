"""The one model configuration shared by both twins (no framework imports).

`FlowConfig` describes a STARFlow or TARFlow model completely: the twins build
their modules from it, it is saved as config.json beside the weights, and it can
be read from the official constructor arguments or the official training YAML.
Unknown keys are an error; known-but-unsupported official features are an error
naming the feature, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FAMILIES = ("starflow", "tarflow")
SEQ_ORDERS = ("L2R", "R2L")
NORM_TYPES = ("layer_norm",)

VAE_DOWNSAMPLE = 8  # SD-VAE: 256 px images -> 32x32 latents

# The official flow implementations (TARFlow's ml-tarflow and STARFlow's ml-starflow)
# share this constant: softplus(a + INV_SOFTPLUS_1) == 1 at a == 0.
INV_SOFTPLUS_1 = 0.541324854612918


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Hyperparameters of a transformer autoregressive flow (STARFlow paper section 3).

    Image side lengths are in model-input pixels: latent pixels for latent models
    (32 for the 256 px SD-VAE model), RGB pixels for pixel TARFlow.
    """

    family: str = "starflow"
    in_channels: int = 4
    img_size: int = 32
    patch_size: int = 1
    channels: int = 512
    num_blocks: int = 4
    layers_per_block: tuple[int, ...] = (8, 8, 8, 8)
    head_dim: int = 64
    expansion: int = 4
    rope: bool = False
    pt_seq_len: int | None = None
    sos: bool = False
    txt_size: int = 0
    txt_dim: int = 0
    cond_top_only: bool = False
    use_softplus: bool = False
    use_final_norm: bool = False
    soft_clip: float = 0.0
    seq_order: str = "R2L"
    num_classes: int = 0
    nvp: bool = True
    norm_type: str = "layer_norm"
    use_bias: bool = True
    noise_std: float = 0.0
    quantization: tuple[int, int] | None = None  # (bits, group_size) of quantized MLX weights

    def __post_init__(self) -> None:
        layers = self.layers_per_block
        if isinstance(layers, int):
            layers = (layers,)
        layers = tuple(int(n) for n in layers)
        if len(layers) == 1:
            layers = layers * self.num_blocks
        object.__setattr__(self, "layers_per_block", layers)
        if self.quantization is not None:
            object.__setattr__(self, "quantization", tuple(int(v) for v in self.quantization))
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"FlowConfig.{field}={getattr(self, field)!r}: {why}")

        if self.family not in FAMILIES:
            fail("family", f"must be one of {FAMILIES}")
        if self.seq_order not in SEQ_ORDERS:
            fail("seq_order", f"must be one of {SEQ_ORDERS}")
        if self.norm_type not in NORM_TYPES:
            fail("norm_type", "only layer_norm is implemented (rms_norm variants are not supported yet)")
        for name in (
            "in_channels",
            "img_size",
            "patch_size",
            "channels",
            "num_blocks",
            "head_dim",
            "expansion",
        ):
            if int(getattr(self, name)) <= 0:
                fail(name, "must be a positive integer")
        if self.img_size % self.patch_size:
            fail("img_size", f"must be divisible by patch_size={self.patch_size}")
        if self.channels % self.head_dim:
            fail("channels", f"must be divisible by head_dim={self.head_dim}")
        if len(self.layers_per_block) != self.num_blocks:
            fail("layers_per_block", f"needs one entry or num_blocks={self.num_blocks} entries")
        if any(n < 0 for n in self.layers_per_block):
            fail("layers_per_block", "layer counts must be >= 0")
        if self.layers_per_block[-1] == 0:
            fail("layers_per_block", "the last (deep) block needs at least one layer")
        if self.txt_size < 0 or self.txt_dim < 0 or self.num_classes < 0:
            fail("txt_size", "txt_size, txt_dim and num_classes must be >= 0")
        if (self.txt_dim > 0) != (self.txt_size > 0) and self.family == "starflow":
            fail(
                "txt_dim", f"text conditioning needs both txt_size and txt_dim > 0 (txt_size={self.txt_size})"
            )
        if self.cond_top_only and self.txt_size == 0:
            fail("cond_top_only", "needs txt_size > 0")
        if self.rope:
            half = self.head_dim // 2
            if self.head_dim % 4 or (self.txt_size > 0 and (half - 8 <= 0 or (half - 8) % 2)):
                fail("head_dim", "RoPE needs head_dim divisible by 4 (and > 16 with text)")
        if self.soft_clip < 0:
            fail("soft_clip", "must be >= 0 (0 disables)")
        if self.noise_std < 0:
            fail("noise_std", "must be >= 0")
        if self.family == "tarflow":
            if self.rope or self.sos or self.txt_size or self.use_softplus or self.use_final_norm:
                fail("family", "tarflow models have no rope, sos, text, softplus or final norm")
            if self.seq_order != "R2L":
                fail("seq_order", "tarflow permutes like R2L (identity on even blocks)")
        else:
            if not self.nvp:
                fail("nvp", "starflow models always predict both shift and scale (nvp=True)")
            if self.num_classes and (self.txt_size != 1 or self.txt_dim != self.num_classes + 1):
                fail(
                    "num_classes",
                    "label-conditioned starflow feeds one-hot labels through the text path: "
                    f"set txt_size=1 and txt_dim=num_classes+1={self.num_classes + 1}",
                )
        if self.quantization is not None:
            bits, group = self.quantization
            if bits not in (4, 8) or group not in (32, 64, 128):
                fail("quantization", "must be (bits in {4, 8}, group_size in {32, 64, 128})")

    # ----- derived quantities -------------------------------------------------------
    @property
    def token_dim(self) -> int:
        """Features per token: C * p * p."""
        return self.in_channels * self.patch_size**2

    @property
    def num_heads(self) -> int:
        return self.channels // self.head_dim

    @property
    def grid_size(self) -> int:
        """Tokens per side at the training resolution."""
        return self.img_size // self.patch_size

    @property
    def rope_seq_len(self) -> int:
        """P of SPEC section 1: positions are scaled so that the mean side is P."""
        return self.pt_seq_len or self.grid_size

    @property
    def deep_block(self) -> int:
        return self.num_blocks - 1

    def block_has_text(self, index: int) -> bool:
        """Whether block `index` projects and attends to the text features."""
        if self.txt_dim == 0:
            return False
        return index == self.deep_block or not self.cond_top_only

    def block_is_flipped(self, index: int) -> bool:
        """Token order of block `index`: L2R flips even blocks, R2L (and TARFlow) odd ones."""
        return (index % 2 == 0) if self.seq_order == "L2R" else (index % 2 == 1)

    @property
    def uses_pos_embed(self) -> bool:
        return not self.rope

    @property
    def patch_layout(self) -> str:
        """Order of features inside a patch: STARFlow `(p1 p2 c)`, TARFlow unfold `(c p1 p2)`."""
        return "c p1 p2" if self.family == "tarflow" else "p1 p2 c"

    @property
    def label_conditioned(self) -> bool:
        return self.num_classes > 0

    def data_dims(self, height: int | None = None, width: int | None = None) -> int:
        """Number of scalar dimensions of one sample (for bits/dim)."""
        height = height or self.img_size
        width = width or self.img_size
        return self.in_channels * height * width

    def check_image_size(self, height: int, width: int, channels: int) -> None:
        """Raise a ValueError naming the problem if an input image cannot go through the flow."""
        if channels != self.in_channels:
            raise ValueError(
                f"input has {channels} channels but the model expects in_channels={self.in_channels}"
            )
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(
                f"input size {height}x{width} is not divisible by patch_size={p}; "
                f"use sizes that are multiples of {p}"
            )
        if self.uses_pos_embed and (height != self.img_size or width != self.img_size):
            raise ValueError(
                f"input size {height}x{width} differs from img_size={self.img_size}; models with a learned "
                "pos_embed (rope=False) only run at their training resolution"
            )

    # ----- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers_per_block"] = list(self.layers_per_block)
        if self.quantization is not None:
            out["quantization"] = list(self.quantization)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FlowConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown FlowConfig keys {unknown}; valid keys are {sorted(names)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> FlowConfig:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FlowConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if "constructor" in values:
            return from_official_arguments(values["constructor"], family=values.get("family", "starflow"))
        return cls.from_dict(values)


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


# ----- named presets ---------------------------------------------------------------
PRESETS: dict[str, FlowConfig] = {
    # configs/starflow_3B_t2i_256x256.yaml with train.py defaults (SPEC section 4)
    "starflow-3b-t2i-256": FlowConfig(
        in_channels=4,
        img_size=32,
        patch_size=1,
        channels=3072,
        num_blocks=6,
        layers_per_block=(2, 2, 2, 2, 2, 24),
        head_dim=64,
        rope=True,
        sos=True,
        txt_size=128,
        txt_dim=2048,
        cond_top_only=True,
        use_softplus=True,
        use_final_norm=True,
        soft_clip=4.0,
        seq_order="L2R",
        noise_std=0.3,
    ),
    # the fast-sampling benchmark model (57M parameters, 16x16x4 latents)
    "bench-small": FlowConfig(
        in_channels=4,
        img_size=16,
        patch_size=1,
        channels=512,
        num_blocks=6,
        layers_per_block=(2, 2, 2, 2, 2, 8),
        head_dim=64,
        rope=True,
        sos=True,
        txt_size=16,
        txt_dim=64,
        cond_top_only=True,
        use_softplus=True,
        use_final_norm=True,
        soft_clip=4.0,
        seq_order="L2R",
        noise_std=0.3,
    ),
    # the embedded demo model: class-conditional, 8x8 grey digits (starflow_convert.digits)
    "digits": FlowConfig(
        in_channels=1,
        img_size=8,
        patch_size=2,  # 16 tokens of 2x2 pixels: 3x cheaper than single pixels on CPU
        channels=128,
        num_blocks=4,
        layers_per_block=(1, 1, 1, 4),
        head_dim=32,
        rope=True,
        sos=True,
        txt_size=1,
        txt_dim=11,
        cond_top_only=True,
        use_softplus=True,
        use_final_norm=True,
        soft_clip=4.0,
        seq_order="L2R",
        num_classes=10,
        noise_std=0.08,
    ),
    "tiny": FlowConfig(
        in_channels=4,
        img_size=8,
        patch_size=1,
        channels=64,
        num_blocks=3,
        layers_per_block=(1, 1, 2),
        head_dim=32,
        rope=True,
        sos=True,
        txt_size=6,
        txt_dim=32,
        cond_top_only=True,
        use_softplus=True,
        use_final_norm=True,
        soft_clip=4.0,
        seq_order="L2R",
        noise_std=0.3,
    ),
}


def resolve_config(config: FlowConfig | Mapping[str, Any] | str | Path) -> FlowConfig:
    """A FlowConfig from itself, a dict (ours, or {"family", "constructor"}), or a JSON path."""
    if isinstance(config, FlowConfig):
        return config
    if isinstance(config, str | Path):
        return FlowConfig.load(config)
    if isinstance(config, Mapping):
        if "constructor" in config:
            return from_official_arguments(config["constructor"], family=config.get("family", "starflow"))
        return FlowConfig.from_dict(config)
    raise TypeError(f"config must be a FlowConfig, dict or path, got {type(config).__name__}")


def preset(name: str) -> FlowConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
