"""Our pipeline folder format, laid out like a diffusers pipeline (framework-free).

    model_index.json        which parts exist, sampling defaults, class names
    transformer/            the flow: config.json + model.safetensors (our format)
    vae/                    diffusers AutoencoderKL folder (latent models only)
    text_encoder/           transformers T5 encoder folder (text models only)
    tokenizer/              spiece.model (+ tokenizer.json ...) for that encoder
    decoder/                optional: a VAE whose decoder was fine-tuned on noisy latents

Video models: vae/ may be the Wan2.2 VAE (diffusers AutoencoderKLWan, 16x spatial, 4x temporal),
and model_index.json's "video" holds the clip length, rate, prompt template flags and VAE
temporal scale (starflow_core.video.settings.VideoDefaults), e.g. {"num_frames": 9, "fps": 8,
"fps_cond": false, "cond_noise_level": false, "mix_aspect": false, "temporal_scale": 1.0}.

`PipelineParts` is where each part lives on disk, whatever the source (a local folder,
the Hub snapshots of an official release); both twins load from it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.io import atomic_write_json, read_safetensors_header
from starflow_core.staging import check_output_apart, staged_folder
from starflow_core.validation import field, read_json, read_json_object, read_vae_config
from starflow_core.version import package_version
from starflow_core.video.settings import VideoDefaults
from starflow_core.wan_vae_config import WanVAEConfig

MODEL_INDEX = "model_index.json"
FLOW_CONFIG = "config.json"
FLOW_WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
COMPONENT_CLASSES = {
    "transformer": ["starflow", "StarFlow"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "decoder": ["diffusers", "AutoencoderKL"],
}
_INDEX_KEYS = {"_class_name", "_starflow_version", "name", "sampling", "labels", "default_prompts", "video"}
WAN_VAE_CLASS = "AutoencoderKLWan"


@dataclasses.dataclass(frozen=True)
class PipelineParts:
    """Where the parts of one pipeline live. `decoder` is a VAE folder or a weights file
    (e.g. the official fine-tuned `pytorch_model.bin`) whose decoder replaces score denoising."""

    name: str
    transformer: Path
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    decoder: Path | None = None
    sampling: GenerationSettings = GenerationSettings()
    labels: tuple[str, ...] | None = None
    default_prompts: tuple[str, ...] = ()
    # what loads these parts again by name (release name, Hub repo id, absolute folder path);
    # written into image metadata as "model". None: not known (parts built by hand)
    source: str | None = None
    # a video model's clip length, rate, prompt template and VAE temporal scale (model_index "video")
    video: VideoDefaults | None = None
    # which weights these are, when that is worth saying (a training run's checkpoint and EMA)
    description: str | None = None

    @property
    def flow_config(self) -> FlowConfig:
        return FlowConfig.load(self.transformer / FLOW_CONFIG)

    def _vae_config(self) -> dict[str, Any]:
        """The VAE's config.json as it is (a JSON object; each reader checks its own fields)."""
        return read_json_object(self.vae / "config.json", "fix the file or download the VAE again")

    @property
    def video_vae(self) -> bool:
        """Whether the VAE is the Wan2.2 video VAE (diffusers AutoencoderKLWan)."""
        return self.vae is not None and self._vae_config().get("_class_name") == WAN_VAE_CLASS

    @property
    def is_video(self) -> bool:
        """A video model: one with video defaults, a video VAE or frames ordered in time."""
        return self.video is not None or self.video_vae or self.flow_config.temporal_causal > 0

    @property
    def vae_downsample(self) -> int:
        """Pixels per latent pixel: 2^(len(block_out_channels) - 1) of the VAE (the Wan VAE:
        patch size x 2 per down block but the last), 1 without one."""
        if self.vae is None:
            return 1
        if self.video_vae:
            return WanVAEConfig.from_diffusers(self._vae_config(), str(self.vae)).spatial_factor
        config = read_vae_config(self.vae / "config.json")
        return 2 ** (len(config.get("block_out_channels", (128, 256, 512, 512))) - 1)

    @property
    def vae_temporal_downsample(self) -> int:
        """Frames per latent frame after the first (the Wan VAE: 4); 1 for image VAEs and pixels."""
        if not self.video_vae:
            return 1
        return WanVAEConfig.from_diffusers(self._vae_config(), str(self.vae)).temporal_factor

    @property
    def image_channels(self) -> int:
        """Channels of the images: the VAE's input channels, or the flow's for pixel models."""
        if self.vae is None:
            return self.flow_config.in_channels
        if self.video_vae:
            return 3  # RGB video; the Wan VAE's in_channels counts its 2x2 patches
        return read_vae_config(self.vae / "config.json").get("in_channels", 3)

    def with_decoder(self, decoder: str | Path | None) -> PipelineParts:
        if decoder is None:
            return self
        decoder = Path(decoder)
        if not decoder.exists():
            raise FileNotFoundError(f"no fine-tuned decoder at {decoder}")
        if self.vae is None:
            raise ValueError("a fine-tuned decoder needs a latent model with a VAE")
        return dataclasses.replace(self, decoder=decoder)

    def check(self) -> None:
        """Raise naming the missing part if these parts cannot make images."""
        config = self.flow_config
        for name in ("transformer", "vae", "text_encoder", "tokenizer"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise FileNotFoundError(f"{self.name}: the {name} folder {path} does not exist")
        if self.labels is not None and len(self.labels) != config.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.labels)} class names for a flow with num_classes="
                f"{config.num_classes}; give one name per class, in label order (none for other models)"
            )
        text_model = config.txt_dim > 0 and not config.label_conditioned
        if text_model and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError(
                f"{self.name}: the flow is text-conditioned (txt_dim={config.txt_dim}) but the pipeline "
                "has no text_encoder/ and tokenizer/; add them (starflow-convert pipeline)"
            )
        if self.vae is None and config.in_channels not in (1, 3):  # pixel models: grey or RGB
            raise ValueError(
                f"{self.name}: the flow makes {config.in_channels}-channel latents "
                "but the pipeline has no vae/"
            )
        if self.vae is not None:
            if self.video_vae:
                latent = WanVAEConfig.from_diffusers(self._vae_config(), str(self.vae)).z_dim
            else:
                latent = read_vae_config(self.vae / "config.json").get("latent_channels", 4)
            if latent != config.in_channels:
                raise ValueError(
                    f"{self.name}: the VAE has {latent} latent channels, "
                    f"the flow in_channels={config.in_channels}"
                )


def flow_folder(folder: str | Path) -> Path:
    """The flow's folder (config.json + model.safetensors) given it or a pipeline folder holding
    it as transformer/, so StarFlow.from_pretrained takes either."""
    folder = Path(folder)
    transformer = folder / "transformer"
    if not (folder / FLOW_CONFIG).is_file() and (transformer / FLOW_CONFIG).is_file():
        return transformer
    return folder


def _component(index: dict[str, Any], folder: Path, name: str) -> Path | None:
    entry = index.get(name)
    if entry is None or entry == [None, None]:
        return None
    path = folder / name
    if not path.is_dir():
        raise FileNotFoundError(f"{folder / MODEL_INDEX} names {name!r} but {path} is missing")
    return path


def read_pipeline_folder(folder: str | Path) -> PipelineParts:
    """Parts of a pipeline folder (model_index.json), or of a bare flow folder (config.json +
    model.safetensors) for pixel models that need no VAE or text encoder."""
    folder = Path(folder)
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        if (folder / FLOW_CONFIG).is_file() and (folder / FLOW_WEIGHTS).is_file():
            parts = PipelineParts(name=folder.name, transformer=folder, source=str(folder.resolve()))
            parts.check()
            return parts
        raise FileNotFoundError(
            f"{folder} is neither a pipeline folder ({MODEL_INDEX}) nor a flow folder "
            f"({FLOW_CONFIG} + {FLOW_WEIGHTS}); build one with starflow-convert"
        )
    fix = "fix it, or build the folder again with starflow-convert pipeline"
    index = read_json_object(index_path, fix)
    unknown = sorted(set(index) - _INDEX_KEYS - set(COMPONENT_CLASSES))
    if unknown:
        raise ValueError(f"{index_path}: unknown keys {unknown}")
    transformer = _component(index, folder, "transformer")
    if transformer is None:
        raise ValueError(f"{index_path} names no transformer")
    source = str(index_path)
    labels = field(index, "labels", "strings", source, fix, default=None, nullable=True)
    parts = PipelineParts(
        name=field(index, "name", "string", source, fix, default=None, nullable=True) or folder.name,
        transformer=transformer,
        vae=_component(index, folder, "vae"),
        text_encoder=_component(index, folder, "text_encoder"),
        tokenizer=_component(index, folder, "tokenizer"),
        decoder=_component(index, folder, "decoder"),
        sampling=GenerationSettings.from_dict(
            field(index, "sampling", "object", source, fix, default=None, nullable=True) or {}
        ),
        labels=tuple(labels) if labels else None,
        default_prompts=tuple(
            field(index, "default_prompts", "strings", source, fix, default=[], nullable=True) or ()
        ),
        source=str(folder.resolve()),
        video=_video_defaults(field(index, "video", "object", source, fix, default=None, nullable=True)),
    )
    parts.check()
    return parts


def _video_defaults(values: dict[str, Any] | None) -> VideoDefaults | None:
    return VideoDefaults.from_dict(values) if values else None


def model_index(parts: PipelineParts) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_class_name": "StarFlowPipeline",
        "_starflow_version": package_version(),
        "name": parts.name,
    }
    for name, classes in COMPONENT_CLASSES.items():
        index[name] = classes if getattr(parts, name) is not None else [None, None]
    index["sampling"] = dataclasses.asdict(parts.sampling)
    index["labels"] = list(parts.labels) if parts.labels else None
    index["default_prompts"] = list(parts.default_prompts)
    if parts.video is not None:
        index["video"] = parts.video.to_dict()
    return index


def _place(source: Path, target: Path) -> None:
    """Hard-link (free, and safe if the source is deleted) or copy one file."""
    source = source.resolve()  # Hub snapshots hold symlinks into blobs/
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _component_files(name: str, folder: Path) -> list[Path]:
    if name == "tokenizer":
        files = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
        if not files or not (folder / "spiece.model").is_file():
            raise FileNotFoundError(f"{folder} holds no spiece.model for the tokenizer")
        return files
    if name == "text_encoder":
        patterns = ("config.json", "model*.safetensors", "model.safetensors.index.json")
    elif name in ("vae", "decoder"):
        patterns = ("config.json", "*.safetensors", "*.bin")
    else:
        patterns = (FLOW_CONFIG, FLOW_WEIGHTS)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not any(p.name == "config.json" for p in files):
        raise FileNotFoundError(f"{folder} holds no config.json for the {name}")
    return files


def check_part_files(parts: PipelineParts) -> None:
    """Every file a pipeline folder would get is what it claims to be: safetensors headers that
    fit their files, JSON that parses (headers only: cheap for gigabytes of weights)."""
    for name in COMPONENT_CLASSES:
        source = getattr(parts, name)
        if source is None or not Path(source).is_dir():
            continue
        for file in _component_files(name, Path(source)):
            if file.suffix == ".safetensors":
                read_safetensors_header(file)
            elif file.suffix == ".json":
                read_json(file, f"fix it, or convert the {name} again")


def write_pipeline_folder(parts: PipelineParts, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Assemble `parts` into a pipeline folder at `out` (files hard-linked or copied); returns the
    files written. Refuses an existing `out` unless overwrite, and an `out` that is or holds one of
    the parts; an existing `out` is replaced only once the new folder is complete."""
    out = Path(out)
    parts.check()
    check_output_apart(out, [getattr(parts, name) for name in COMPONENT_CLASSES])
    check_part_files(parts)
    with staged_folder(out, overwrite=overwrite) as staging:
        return fill_pipeline_folder(parts, staging, out)


def fill_pipeline_folder(parts: PipelineParts, folder: Path, final: Path | None = None) -> list[Path]:
    """Place the files of `parts` into the empty `folder`; returns their paths under `final`
    (where `folder`, a staging folder, will be moved), or under `folder`."""
    final = final or folder
    written = []
    for name in COMPONENT_CLASSES:
        source = getattr(parts, name)
        if source is None:
            continue
        source = Path(source)
        if name == "decoder" and source.is_file():
            raise ValueError("write_pipeline_folder needs the decoder as a VAE folder, not a weights file")
        for file in _component_files(name, source):
            _place(file, folder / name / file.name)
            written.append(final / name / file.name)
    atomic_write_json(folder / MODEL_INDEX, model_index(parts))
    written.append(final / MODEL_INDEX)
    return written
