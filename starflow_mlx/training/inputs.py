"""From a TrainConfig to batches of model inputs: dataset, loader, augmentation, conditions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.training.config import TrainConfig, conditioning_of
from starflow_core.training.image_folders import (
    check_class_count,
    check_latent_channels,
    nearest_bucket,
    training_data_kind,
)
from starflow_core.training.video_objective import check_video_run, drops_first_frame, training_prompts

from ..data import ImageFolderDataset, LatentShardDataset, SampleRef
from .objective import augment, drop_mask, micro_step_keys

__all__ = ["InputBuilder", "ModelInputs", "build_dataset", "sample_conditions"]


def build_dataset(config: FlowConfig, train: TrainConfig):
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


def build_video_dataset(config: FlowConfig, train: TrainConfig):
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


def batch_stream(dataset, train: TrainConfig, epoch: int, start: int):
    """The loader of the dataset's kind (clips or images / latents), from (epoch, start)."""
    if train.num_frames:
        from ..video_data import batch_stream as video_batch_stream

        return video_batch_stream(dataset, train, epoch, start)
    from ..data import batch_stream as image_batch_stream

    return image_batch_stream(dataset, train, epoch, start)


@dataclass
class ModelInputs:
    x: mx.array  # (B, H, W, C) or a video (B, T, H, W, C), augmented
    y: mx.array | None
    weight: float  # 0 when every image of the batch failed to decode


class InputBuilder:
    """Turns a batch from batch_stream into augmented model inputs with condition dropout."""

    def __init__(self, config: FlowConfig, train: TrainConfig, dataset, text_encoder=None):
        self.config = config
        self.train = train
        self.dataset = dataset
        self.text_encoder = text_encoder
        self.noise_std = train.noise_std if train.noise_std is not None else config.noise_std
        null_text = getattr(dataset, "null_text", None)
        self.null_text = mx.array(null_text) if null_text is not None else None

    def __call__(self, batch: dict, micro_step: int) -> ModelInputs:
        x = mx.array(next(batch[key] for key in ("video", "image", "latent") if key in batch))
        rows = mx.array(batch["slot"].astype(np.int32))
        global_rows = self.train.micro_batch_size
        noise_key, drop_key = micro_step_keys(self.train.seed, micro_step)
        x = augment(x, rows, global_rows, noise_key, self.train.noise_type, self.noise_std)
        extend = x.ndim == 5 and drops_first_frame(self.train.seed, micro_step, self.train.drop_image)
        if extend:  # official drop_image: after the noise, the whole micro-batch
            x = x[:, 1:]
        dropped = drop_mask(rows, global_rows, drop_key, self.train.drop_label)
        return ModelInputs(x, self.conditions(batch, dropped, extend), 1.0 if batch["valid"] else 0.0)

    def conditions(self, batch: dict, dropped: mx.array, extend: bool = False) -> mx.array | None:
        if "label" in batch:
            return mx.where(dropped, -1, mx.array(batch["label"].astype(np.int32)))
        if "text_features" in batch:
            features = mx.array(batch["text_features"])
            return mx.where(dropped[:, None, None], mx.broadcast_to(self.null_text, features.shape), features)
        if getattr(self.dataset, "conditioning", None) == "text" and hasattr(self.dataset, "text_of"):
            texts = [self.dataset.text_of(int(i)) for i in batch["index"]]
            fps = batch["fps"].tolist() if "fps" in batch else None
            height, width = batch["video" if "video" in batch else "image"].shape[-3:-1]
            aspect = nearest_bucket(width, height)  # the batch's bucket (official get_batch_modes)
            prompts = training_prompts(
                texts, dropped.tolist(), extend, self.train, self.noise_std, fps, aspect
            )
            return self.text_encoder.encode(prompts, self.config.txt_size).astype(mx.float32)
        return None

    def null_condition(self, count: int) -> mx.array | None:
        """The null condition for guidance: label -1 or the encoded empty prompt."""
        if self.config.num_classes > 0:
            return mx.full((count,), -1, dtype=mx.int32)
        if self.null_text is not None:
            return mx.broadcast_to(self.null_text, (count, *self.null_text.shape))
        if self.text_encoder is not None:
            return self.text_encoder.encode([""] * count, self.config.txt_size).astype(mx.float32)
        return None


def sample_conditions(config: FlowConfig, dataset, builder: InputBuilder, count: int) -> tuple:
    """(conditions, rows) for the sample grid: one row per class, or the first captions."""
    if config.num_classes > 0:
        classes = min(config.num_classes, 10)
        per_class = max(1, count // classes)
        return mx.repeat(mx.arange(classes, dtype=mx.int32), per_class), classes
    if config.txt_dim == 0:
        return None, max(1, int(count**0.5))
    if isinstance(dataset, LatentShardDataset):
        items = [dataset[SampleRef(i % len(dataset), False, 0)] for i in range(count)]
        return mx.array(np.stack([item["text_features"] for item in items])), max(1, int(count**0.5))
    texts = [dataset.text_of(i % len(dataset)) for i in range(count)]
    return builder.text_encoder.encode(texts, config.txt_size).astype(mx.float32), max(1, int(count**0.5))
