"""Training configuration, shared by both trainers: a `model` section (a FlowConfig) and a
`train` section (TrainConfig).

A run file is JSON or YAML:

    model: tiny                      # a preset name, or FlowConfig fields,
    # model: {preset: tiny, channels: 32}   # or a preset with overrides
    train: {data: my_images/, steps: 2000, batch_size: 64}

Command-line overrides `train.lr=1e-4` / `model.channels=64` are applied on top.
Unknown keys are an error in both sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starflow_core.config import FlowConfig
from starflow_core.field_types import check_field_types
from starflow_core.presets import preset
from starflow_core.validation import field, load_yaml, parse_json, read_text

NOISE_TYPES = ("gaussian", "uniform")


PARALLEL_MODES = ("ddp", "fsdp")


DATA_FORMATS = ("auto", "images", "latents")


EVAL_FEATURES = ("digits", "inception")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and bookkeeping settings (defaults follow the official train.py)."""

    data: str = ""  # image folder, or a folder of encoded shards (encode_dataset)
    data_format: str = "auto"  # auto: shards if <data>/index.json exists
    out_dir: str = "runs/starflow"
    steps: int = 1000  # optimizer steps; the cosine schedule ends here
    batch_size: int = 64  # global: summed over processes and accumulation micro-steps
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    noise_type: str = "gaussian"  # gaussian: x + noise_std*eps; uniform: 8-bit dequantisation
    noise_std: float | None = None  # None: the model config's noise_std
    latent_norm_reg: float = 0.0  # official latent_norm_regularization (1e-4 for the 3B model)
    drop_label: float = 0.0  # probability of replacing the condition by the null one
    ema_decay: float = 0.9999  # 0 disables the EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + t) / (10 + t)) at step t (schedule.ema_decay_at)
    gradient_checkpointing: bool = False  # torch only
    parallel: str = "ddp"  # torch multi-process mode: ddp or fsdp (FSDP2)
    bf16: bool = True  # torch autocast / FSDP mixed precision, CUDA only (MLX trains in float32)
    seed: int = 0
    image_size: int | None = None  # pixels; None: the model's img_size
    buckets: bool = False  # aspect-ratio buckets (rope models only)
    flip: bool = True
    num_workers: int = 2  # loader processes (torch) / decoding threads (MLX)
    init_weights: str | None = None  # start from a save_pretrained folder
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0 disables the sample grid
    sample_count: int = 8
    sample_guidance: float = 0.0
    vae: str | None = None  # AutoencoderKL folder, to decode latent samples
    text_encoder: str | None = None  # TextEncoder folder, for captioned image folders
    # ----- video (starflow_core.training.video_objective); num_frames 0 trains on images
    num_frames: int = 0  # frames per training clip, read from a folder of clips
    fps: float | None = None  # frames per second to read clips at (None: each clip's own rate)
    drop_image: float = 0.0  # official drop_image: probability a micro-batch loses its first frame
    denoiser_lr: float = 1e-4  # the learned self-denoiser's own AdamW (official: fixed 1e-4 -> 1e-6)
    denoiser_min_lr: float = 1e-6
    # the official prompt templates of captioned training data (starflow_core.video.prompts)
    fps_cond: bool = False  # "A video with {fps} fps:" around each caption (the clip's rate)
    cond_noise_level: bool = False  # "Noise Level {n}:" in front, and the loss weighted by noise_std / 0.3
    mix_aspect: bool = False  # "in a {w:h} aspect ratio." after (the batch's bucket)
    # held-out evaluation every eval_every steps (0: never): exact bits/dim on eval_data (a
    # folder like `data`), and FID against eval_reference statistics (an .npz with mu, sigma
    # made by starflow-eval --save-statistics with the same eval_features) from eval_samples samples
    eval_every: int = 0
    eval_data: str | None = None
    eval_batches: int = 0  # 0: one pass over eval_data
    eval_reference: str | None = None
    eval_features: str = "digits"  # digits (8x8 stand-in) or inception (torch twin)
    eval_samples: int = 500

    def __post_init__(self) -> None:
        # wrong types (steps=abc, betas=0.9, lr=.inf) are errors naming the field; numeric strings
        # become numbers (YAML 1.1 reads 1e-4, without a dot, as a string)
        check_field_types(self)
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {why}")

        if not self.data:
            fail("data", "set the training data folder (train.data=...)")
        if self.data_format not in DATA_FORMATS:
            fail("data_format", f"must be one of {DATA_FORMATS}")
        if self.noise_type not in NOISE_TYPES:
            fail("noise_type", f"must be one of {NOISE_TYPES}")
        if self.parallel not in PARALLEL_MODES:
            fail("parallel", f"must be one of {PARALLEL_MODES}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                fail(name, "must be >= 1")
        for name in ("warmup_steps", "num_workers", "sample_every", "sample_count"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        if self.seed < 0:  # MLX cannot seed from a negative number; torch can: refused in both
            fail("seed", "must be >= 0 (both twins seed their generators from it)")
        if self.batch_size % self.grad_accum:
            fail("batch_size", f"must be divisible by grad_accum={self.grad_accum}")
        if not 0 < self.min_lr <= self.lr:
            fail("min_lr", f"must be in (0, lr={self.lr}]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail("betas", "must be two numbers in [0, 1)")
        if not 0 <= self.drop_label < 1:
            fail("drop_label", "must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            fail("ema_decay", "must be in [0, 1) (0 disables the EMA)")
        for name in ("grad_clip", "weight_decay", "latent_norm_reg", "sample_guidance"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0" + (" (0 disables clipping)" if name == "grad_clip" else ""))
        if self.noise_std is not None and self.noise_std < 0:
            fail("noise_std", "must be >= 0")
        if self.num_frames < 0:
            fail("num_frames", "must be >= 0 (0 trains on images)")
        if self.fps is not None and not self.fps > 0:
            fail("fps", "must be > 0 (or None: each clip's own rate)")
        if not 0 <= self.drop_image < 1:
            fail("drop_image", "must be in [0, 1)")
        if self.drop_image > 0 and self.num_frames < 2:
            fail("drop_image", "drops the first frame of a clip: it needs train.num_frames >= 2")
        for name in ("fps_cond", "cond_noise_level", "mix_aspect"):
            if getattr(self, name) and not self.text_encoder:
                fail(name, "wraps captions in the official prompt template: it needs train.text_encoder")
        if not 0 < self.denoiser_min_lr <= self.denoiser_lr:
            fail("denoiser_min_lr", f"must be in (0, denoiser_lr={self.denoiser_lr}]")
        self._validate_evaluation(fail)

    def _validate_evaluation(self, fail) -> None:
        for name in ("eval_every", "eval_batches", "eval_samples"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        if self.eval_features not in EVAL_FEATURES:
            fail("eval_features", f"must be one of {EVAL_FEATURES}")
        if self.eval_every and not (self.eval_data or self.eval_reference):
            fail("eval_every", "set train.eval_data (held-out images or shards) and/or train.eval_reference")
        if self.eval_reference and not self.eval_samples:
            fail("eval_samples", "must be >= 2 to compute a FID against train.eval_reference")

    @property
    def micro_batch_size(self) -> int:
        """Samples per accumulation micro-step, summed over processes."""
        return self.batch_size // self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; valid keys are {sorted(names)}")
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: FlowConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}


def model_config_from(section: str | Mapping[str, Any]) -> FlowConfig:
    """A preset name, a dict of FlowConfig fields, or {preset: name, **overrides}."""
    if isinstance(section, str):
        return preset(section)
    if not isinstance(section, Mapping):
        raise ValueError(
            f"the model section must be a preset name or a mapping, got {type(section).__name__}"
        )
    values = dict(section)
    if "preset" in values:
        base = preset(values.pop("preset")).to_dict()
        base.update(values)
        values = base
    return FlowConfig.from_dict(values)


def read_run_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML run file into {"model": ..., "train": ...} (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no run config at {path}")
    text = read_text(path, "the run file")
    fix = "a run file is a mapping with 'model' and 'train' sections (docs/training.md)"
    if path.suffix == ".json":
        return check_run_document(path, parse_json(text, str(path), fix))
    return check_run_document(path, load_yaml(text, str(path), fix))


def check_run_document(path: Path, document: Any) -> dict[str, Any]:
    """A parsed run file: a mapping with only `model` and `train` sections."""
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping with 'model' and 'train' sections")
    unknown = sorted(set(document) - {"model", "train"}, key=str)
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; expected 'model' and 'train'")
    fix = "the train section maps setting names to values (docs/training.md)"
    field(document, "train", "object", str(path), fix, default=None, nullable=True)
    return document


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 1e-4, true, [1, 2])."""
    out = {"model": document.get("model", {}), "train": dict(document.get("train") or {})}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or section not in ("model", "train") or not field:
            raise ValueError(f"override {item!r} must look like train.lr=1e-4 or model.channels=64")
        value = (
            load_yaml(raw, f"--set {item}", "quote the value, or write it as YAML") if raw.strip() else None
        )
        if section == "model":
            model = out["model"]
            if not isinstance(model, str | Mapping):
                raise ValueError(
                    f"the model section must be a preset name or a mapping, got {type(model).__name__}"
                )
            model = {"preset": model} if isinstance(model, str) else dict(model)
            model[field] = value
            out["model"] = model
        else:
            out["train"][field] = value
    return out


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    document = read_run_file(path) if path is not None else {}
    merged = apply_overrides(document, overrides)
    if not merged["model"]:
        raise ValueError("no model given: set a model section in the run file or model.preset=<name>")
    return RunConfig(model=model_config_from(merged["model"]), train=TrainConfig.from_dict(merged["train"]))


def conditioning_of(config: FlowConfig) -> str:
    """How a model is conditioned, so how its training data is read: label, text or none."""
    if config.num_classes > 0:
        return "label"
    return "text" if config.txt_dim > 0 else "none"
