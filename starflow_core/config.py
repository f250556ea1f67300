"""The one model configuration shared by both twins (no framework imports).

`FlowConfig` describes a STARFlow or TARFlow model completely: the twins build their
modules from it and it is saved as config.json beside the weights. Unknown keys are an
error. Named presets are in presets.py; reading the official constructor arguments and
training YAMLs is in official/arguments.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starflow_core.field_types import check_field_types
from starflow_core.io import atomic_write_text
from starflow_core.positions import TEXT_ROPE_FREQUENCIES
from starflow_core.validation import read_json_object, refuse_special_file

FAMILIES = ("starflow", "tarflow")


SEQ_ORDERS = ("L2R", "R2L")


# Pre-norms of the transformer layers (official norm_type): LayerNorm (eps 1e-5), RMSNorm with
# the weight stored as an offset (eps 1e-6), or none (the official code builds an identity for
# any other value). The final and post norms are always RMSNorm.
NORM_TYPES = ("layer_norm", "rms_norm", "none")


VAE_DOWNSAMPLE = 8  # SD-VAE: 256 px images -> 32x32 latents


# Options of the official STARFlow Model that TARFlow's model lacks, with their defaults.
STARFLOW_ONLY_OPTIONS = {
    "num_heads": None,
    "num_kv_heads": None,
    "use_swiglu": False,
    "use_qk_norm": False,
    "use_post_norm": False,
    "hf_style_rope": False,
    "norm_type": "layer_norm",
    "use_bias": True,
}


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
    num_heads: int | None = None  # query heads; None: channels // head_dim
    num_kv_heads: int | None = None  # grouped key/value heads (GQA); None: num_heads
    expansion: int = 4
    use_swiglu: bool = False  # MLP gate/up/down projections with a tanh-GELU gate
    use_qk_norm: bool = False  # RMSNorm of each query and key head before RoPE
    use_post_norm: bool = False  # RMSNorm of the attention and MLP outputs before the residual add
    rope: bool = False
    hf_style_rope: bool = False  # RoPE rotates dims (i, i + head_dim/2), not (2i, 2i+1)
    pt_seq_len: int | None = None
    sos: bool = False
    txt_size: int = 0  # text tokens; > 0 with txt_dim=0: no text, but the 3-D RoPE (official)
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
    # ----- video (STARFlow-V, SPEC section 9); inputs (B, T, H, W, C) of T latent frames
    temporal_causal: int = 0  # >= 1: flipped blocks reverse tokens within each frame, frames stay in order
    shallow_block_local: bool = False  # blocks other than the deep one see one frame at a time
    top_block_channels: int | None = None  # width of the deep block (None: channels)
    local_attn_window: int | None = None  # frames the deep block attends to when sampling long videos
    learnable_self_denoiser: bool = False  # an 8-layer non-causal denoiser (`learnable_self_denoiser.*`)
    conditional_denoiser: bool = False  # the denoiser attends to the text
    denoiser_window: int | None = None  # frames behind each frame the denoiser sees (None: all)
    quantization: tuple[int, int] | None = None  # (bits, group_size) of quantized MLX weights

    def __post_init__(self) -> None:
        if isinstance(self.layers_per_block, int) and not isinstance(self.layers_per_block, bool):
            object.__setattr__(self, "layers_per_block", (self.layers_per_block,))
        check_field_types(self)  # e.g. "channels": "128" in a config.json is an error, not a crash
        if len(self.layers_per_block) == 1:
            object.__setattr__(self, "layers_per_block", self.layers_per_block * self.num_blocks)
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"FlowConfig.{field}={getattr(self, field)!r}: {why}")

        if self.family not in FAMILIES:
            fail("family", f"must be one of {FAMILIES}")
        if self.seq_order not in SEQ_ORDERS:
            fail("seq_order", f"must be one of {SEQ_ORDERS}")
        if self.norm_type not in NORM_TYPES:
            fail(
                "norm_type",
                f"must be one of {NORM_TYPES} (the official code silently uses no pre-norm for any other "
                "value: write 'none' if that is what the checkpoint was trained with)",
            )
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
        if len(self.layers_per_block) != self.num_blocks:
            fail("layers_per_block", f"needs one entry or num_blocks={self.num_blocks} entries")
        if any(n < 0 for n in self.layers_per_block):
            fail("layers_per_block", "layer counts must be >= 0")
        if self.layers_per_block[-1] == 0:
            fail("layers_per_block", "the last (deep) block needs at least one layer")
        if self.txt_size < 0 or self.txt_dim < 0 or self.num_classes < 0:
            fail("txt_size", "txt_size, txt_dim and num_classes must be >= 0")
        if self.txt_dim > 0 and self.txt_size == 0 and self.family == "starflow":
            fail(
                "txt_dim",
                f"text conditioning needs txt_size > 0 text tokens (txt_size={self.txt_size}); "
                "txt_size > 0 with txt_dim=0 is a model without text (its RoPE keeps the third coordinate)",
            )
        if self.cond_top_only and self.txt_size == 0:
            fail("cond_top_only", "needs txt_size > 0")
        self._validate_heads(fail)
        if self.pt_seq_len is not None and self.pt_seq_len < 0:
            fail("pt_seq_len", "must be a positive grid side (None or 0: img_size // patch_size)")
        if self.soft_clip < 0:
            fail("soft_clip", "must be >= 0 (0 disables)")
        if self.noise_std < 0:
            fail("noise_std", "must be >= 0")
        if self.family == "tarflow":
            if self.rope or self.sos or self.txt_size or self.use_softplus or self.use_final_norm:
                fail("family", "tarflow models have no rope, sos, text, softplus or final norm")
            if self.channels % self.head_dim:  # the official TARFlow asserts it
                fail("channels", f"tarflow needs channels divisible by head_dim={self.head_dim}")
            variants = [
                name for name, default in STARFLOW_ONLY_OPTIONS.items() if getattr(self, name) != default
            ]
            if variants:
                fail("family", f"the official TARFlow has none of the options {variants} (STARFlow only)")
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
        self._validate_video(fail)
        if self.quantization is not None:
            bits, group = self.quantization
            if bits not in (4, 8) or group not in (32, 64, 128):
                fail("quantization", "must be (bits in {4, 8}, group_size in {32, 64, 128})")

    def _validate_video(self, fail) -> None:
        """The official Model's asserts on the video options, as errors naming the field."""
        if self.temporal_causal not in (0, 1, 2):
            fail("temporal_causal", "must be 0, 1 or 2")
        if self.temporal_causal and self.seq_order != "L2R":
            fail("temporal_causal", "needs seq_order='L2R' (every block causal in time)")
        if self.shallow_block_local and not self.cond_top_only:
            fail("shallow_block_local", "needs cond_top_only (frame-local blocks see no text)")
        if self.local_attn_window is not None:
            if self.local_attn_window < 1:
                fail("local_attn_window", "must be a positive number of frames, or None")
            if not self.shallow_block_local:
                fail("local_attn_window", "needs shallow_block_local (only the deep block spans frames)")
            if not self.sos:
                fail(
                    "local_attn_window",
                    "needs sos=True (each window starts from sos, as in the official sampler)",
                )
        if self.top_block_channels is not None and self.top_block_channels <= 0:
            fail("top_block_channels", "must be a positive width, or None for channels")
        if (
            self.top_block_channels is not None
            and not self.num_heads
            and self.top_block_channels < self.head_dim
        ):
            fail("top_block_channels", f"gives the deep block no attention head of head_dim={self.head_dim}")
        if self.denoiser_window is not None and self.denoiser_window < 0:
            fail("denoiser_window", "must be >= 0 frames, or None")
        if self.conditional_denoiser and not (self.learnable_self_denoiser and self.txt_dim > 0):
            fail("conditional_denoiser", "needs learnable_self_denoiser and a text-conditioned model")
        if self.family == "tarflow" and (self.temporal_causal or self.learnable_self_denoiser):
            fail("family", "tarflow models have no video options")

    def _validate_heads(self, fail) -> None:
        """Head counts and RoPE widths: refuse exactly what the official model cannot run."""
        for name in ("num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                fail(name, "must be a positive integer, or None for the default")
        if self.query_heads <= 0:
            fail("head_dim", f"channels={self.channels} < head_dim gives no attention head; set num_heads")
        if self.query_heads % self.kv_heads:
            fail("num_kv_heads", f"must divide the number of query heads ({self.query_heads})")
        if self.rope:
            # Angles per head: 2D, head_dim/4 for each of row and column (head_dim % 4 == 0).
            # 3D (text models): (head_dim/2 - 8)/2 each, plus 8 for the text coordinate, so
            # head_dim >= 16; at 16 the 8 text frequencies fill the head (SPEC section 1).
            if self.head_dim % 4:
                fail("head_dim", "RoPE needs head_dim divisible by 4")
            if self.txt_size > 0 and self.head_dim < 2 * TEXT_ROPE_FREQUENCIES:
                fail(
                    "head_dim", "RoPE with text needs head_dim >= 16 (8 frequencies go to the text position)"
                )

    # ----- derived quantities -------------------------------------------------------
    @property
    def token_dim(self) -> int:
        """Features per token: C * p * p."""
        return self.in_channels * self.patch_size**2

    @property
    def query_heads(self) -> int:
        """Attention heads of the queries (official: num_heads or channels // head_dim)."""
        return self.num_heads or self.channels // self.head_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads, each shared by query_heads // kv_heads query heads (GQA)."""
        return self.num_kv_heads or self.query_heads

    @property
    def mlp_width(self) -> int:
        """Hidden width of the MLP (gate/up projections with SwiGLU)."""
        return self.channels * self.expansion

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

    def block_channels(self, index: int) -> int:
        """Width of block `index`: top_block_channels for the deep block when given."""
        if index == self.deep_block and self.top_block_channels:
            return self.top_block_channels
        return self.channels

    def layer_config(self, index: int) -> FlowConfig:
        """The configuration the transformer layers of block `index` are built from: this one,
        or for a wider deep block its width, with channels // head_dim heads unless num_heads
        is set (the official Model keeps an explicit num_heads)."""
        width = self.block_channels(index)
        if width == self.channels:
            return self
        return self.replace(
            channels=width, num_heads=self.num_heads or width // self.head_dim, top_block_channels=None
        )

    def block_is_frame_local(self, index: int) -> bool:
        """Whether block `index` models each video frame on its own (shallow_block_local)."""
        return self.shallow_block_local and index != self.deep_block

    def flip_groups(self, frames: int) -> int:
        """A flipped block reverses its tokens within this many equal groups: each frame with
        temporal_causal (frames stay in order), else the whole sequence."""
        return frames if self.temporal_causal else 1

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

    def check_video(self, frames: int) -> None:
        """Raise a ValueError if a video of `frames` frames cannot go through this model."""
        if frames < 1:
            raise ValueError(f"a video needs at least one frame, got {frames}")
        if frames > 1 and not (self.rope and self.txt_size > 0):
            raise ValueError(
                "video models place frames by a third RoPE coordinate, which needs rope=True and a "
                "text-conditioned model (txt_size > 0), as in the official code"
            )

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
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FlowConfig:
        """Our config.json; official constructor JSON goes through `resolve_config`."""
        values = read_json_config(path)
        if "constructor" in values:
            raise ValueError(
                f"{path} holds official constructor arguments, not our config.json; "
                "read it with starflow_core.resolve_config"
            )
        return cls.from_dict(values)


def read_json_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    refuse_special_file(path, "the config")
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    return read_json_object(path, "fix the file or convert the model again")
