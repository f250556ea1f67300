"""From a TrainConfig to batches of model inputs: dataset, loader, augmentation, conditions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from starflow_core.config import FlowConfig
from starflow_core.training.config import TrainConfig, conditioning_of
from starflow_core.training.image_folders import (
    check_class_count,
    check_latent_channels,
    nearest_bucket,
    training_data_kind,
)
from starflow_core.training.video_objective import check_video_run, drops_first_frame, training_prompts

from ..data import (
    ImageFolderDataset,
    LatentShardDataset,
    SampleRef,
)
from .objective import augment, drop_mask, micro_step_generator


def build_dataset(config: FlowConfig, train: TrainConfig) -> torch.utils.data.Dataset:
    folder = Path(train.data)
    if train.num_frames:
        return build_video_dataset(config, train)
    if training_data_kind(config, train) == "latents":
        dataset = LatentShardDataset(folder)
        check_latent_channels(dataset.index, folder, config.in_channels)
        return dataset
    size = train.image_size or config.img_size
    dataset = ImageFolderDataset(
        folder, conditioning_of(config), size, config.patch_size, train.buckets, channels=config.in_channels
    )
    check_class_count(dataset, config.num_classes)
    return dataset


def build_video_dataset(config: FlowConfig, train: TrainConfig) -> torch.utils.data.Dataset:
    """A folder of clips (starflow_core.training.video_folders) of train.num_frames frames."""
    from ..video_data import VideoFolderDataset

    check_video_run(config, train)
    dataset = VideoFolderDataset(
        train.data,
        conditioning_of(config),
        train.image_size or config.img_size,
        config.patch_size,
        train.num_frames,
        train.fps,
        train.buckets,
        channels=config.in_channels,
    )
    check_class_count(dataset, config.num_classes)
    return dataset


def batch_stream(dataset, train: TrainConfig, epoch: int, start: int, rank: int = 0, world_size: int = 1):
    """The loader of the dataset's kind (clips or images / latents), from (epoch, start)."""
    if train.num_frames:
        from ..video_data import batch_stream as video_batch_stream

        return video_batch_stream(dataset, train, epoch, start, rank, world_size)
    from ..data import batch_stream as image_batch_stream

    return image_batch_stream(dataset, train, epoch, start, rank, world_size)


@dataclass
class ModelInputs:
    x: torch.Tensor  # (B, C, H, W) or a video (B, T, C, H, W), augmented
    y: torch.Tensor | None
    weight: float  # 0 when every image of this process's share failed to decode


class InputBuilder:
    """Turns a collated batch into augmented model inputs with condition dropout."""

    def __init__(
        self, config: FlowConfig, train: TrainConfig, dataset, device: torch.device, text_encoder=None
    ):
        self.config = config
        self.train = train
        self.device = device
        self.dataset = dataset
        self.text_encoder = text_encoder
        self.noise_std = train.noise_std if train.noise_std is not None else config.noise_std
        self.null_text = getattr(dataset, "null_text", None)

    def __call__(self, batch: dict, micro_step: int) -> ModelInputs:
        x = next(batch[key] for key in ("video", "image", "latent") if key in batch).to(self.device)
        rows = batch["slot"]
        global_rows = self.train.micro_batch_size
        generator = micro_step_generator(self.train.seed, micro_step)
        x = augment(x, rows, global_rows, generator, self.train.noise_type, self.noise_std)
        extend = x.dim() == 5 and drops_first_frame(self.train.seed, micro_step, self.train.drop_image)
        if extend:  # official drop_image: after the noise, the whole micro-batch
            x = x[:, 1:]
        dropped = drop_mask(rows, global_rows, generator, self.train.drop_label)
        return ModelInputs(x, self.conditions(batch, dropped, extend), 1.0 if batch["valid"] else 0.0)

    def conditions(self, batch: dict, dropped: torch.Tensor, extend: bool = False) -> torch.Tensor | None:
        if "label" in batch:
            return torch.where(dropped, -1, batch["label"]).to(self.device)
        if "text_features" in batch:
            null = self.null_text.expand_as(batch["text_features"])
            return torch.where(dropped[:, None, None], null, batch["text_features"]).to(self.device)
        if "text" in batch:
            fps = batch["fps"].tolist() if "fps" in batch else None
            height, width = batch["video" if "video" in batch else "image"].shape[-2:]
            aspect = nearest_bucket(width, height)  # the batch's bucket (official get_batch_modes)
            prompts = training_prompts(
                batch["text"], dropped.tolist(), extend, self.train, self.noise_std, fps, aspect
            )
            with torch.no_grad():
                return self.text_encoder.encode(prompts, self.config.txt_size).float().to(self.device)
        return None

    def null_condition(self, count: int) -> torch.Tensor | None:
        """The null condition for guidance: label -1 or the encoded empty prompt."""
        if self.config.num_classes > 0:
            return torch.full((count,), -1, dtype=torch.long)
        if self.null_text is not None:
            return self.null_text.expand(count, -1, -1).clone()
        if self.text_encoder is not None:
            with torch.no_grad():
                return self.text_encoder.encode([""] * count, self.config.txt_size).float()
        return None


def sample_conditions(config: FlowConfig, dataset, builder: InputBuilder, count: int) -> tuple:
    """(conditions, rows) for the sample grid: one row per class, or the first captions."""
    if config.num_classes > 0:
        classes = min(config.num_classes, 10)
        per_class = max(1, count // classes)
        labels = torch.arange(classes).repeat_interleave(per_class)
        return labels, classes
    if config.txt_dim == 0:
        return None, max(1, int(count**0.5))
    items = [dataset[SampleRef(i % len(dataset), False, 0)] for i in range(count)]
    items = [item for item in items if not item.get("corrupt", False)] or items
    if "text_features" in items[0]:
        return torch.stack([item["text_features"] for item in items]), max(1, int(count**0.5))
    with torch.no_grad():
        features = builder.text_encoder.encode([item["text"] for item in items], config.txt_size).float()
    return features, max(1, int(count**0.5))
