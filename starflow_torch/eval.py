"""Evaluate samples as papers do, in PyTorch: FID, Inception Score, precision/recall, CLIP
score and exact bits/dim (`starflow-eval`, also `starflow-torch-eval`).

    starflow-eval samples/in256 --reference VIRTUAL_imagenet256_labeled.npz
    starflow-eval samples/digits --reference digits_train.npz --features digits

Inception features come from torch-fidelity's port of the TensorFlow FID graph (the network
torchmetrics' FID also uses), with its weights file from torch's hub cache or --weights;
nothing is downloaded. See starflow_core.evaluation.eval_cli for the options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from starflow_core.evaluation import eval_cli
from starflow_core.sources.pipeline_folder import PipelineParts

from .generate import choose_device

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def inception_weights(path: Path | None) -> Path:
    """--weights, else torch-fidelity's file in torch's hub cache; never downloads."""
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"no Inception weights at {path} (expected {INCEPTION_FILE} from {INCEPTION_URL})"
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        raise FileNotFoundError(
            f"no Inception weights: {INCEPTION_FILE} is not in torch's hub cache ({cached.parent}); "
            f"fetch it once from {INCEPTION_URL} (curl -L -o {cached} {INCEPTION_URL}) or pass --weights FILE"
        )
    return cached


def inception_network(weights: Path, device: torch.device):
    """torch-fidelity's FeatureExtractorInceptionV3 with pool3 (2048) and unbiased logits (1008)."""
    torch.load(weights, map_location="cpu", weights_only=True)  # refuses a file carrying code first
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as err:  # not installed, or a torchvision that does not match this torch
        raise ValueError(
            f"the Inception features need torch-fidelity (pip install 'starflow-mlx[eval]', with a torchvision "
            f"built for torch {torch.__version__}): {type(err).__name__}: {err}"
        ) from None
    network = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    return network.to(device).eval()


@torch.no_grad()
def inception_features(network, images: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, H, W, 3) -> pool3 features (n, 2048) and logits (n, 1008), float64."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)  # (n, 3, H, W) uint8
    pool, logits = network(x)
    return pool.double().cpu().numpy(), logits.double().cpu().numpy()


def inception(weights: Path | None, args: argparse.Namespace) -> eval_cli.FeatureFn:
    path = inception_weights(weights)
    device = choose_device(args.device, local_rank=0)
    network = inception_network(path, device)

    return lambda images: inception_features(network, images, device)


def clip_scores(folder: Path, images: np.ndarray, prompts: list[str], args: argparse.Namespace) -> np.ndarray:
    """100 x max(cos(image, text), 0) per image (the CLIP score of Hessel et al. 2021 with w = 100,
    as torchmetrics reports it), with a local transformers CLIP folder; nothing is downloaded."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except OSError as err:
        raise ValueError(
            f"{folder} is not a complete CLIP folder ({err}); e.g. hf download openai/clip-vit-large-patch14 "
            f"--local-dir {folder}"
        ) from None
    device = choose_device(args.device, local_rank=0)
    model.to(device)
    scores = []
    with torch.no_grad():
        for first in range(0, len(images), args.batch_size):
            part = slice(first, first + args.batch_size)
            inputs = processor(
                text=prompts[part],
                images=list(images[part]),
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(device)
            outputs = model(**inputs)  # image_embeds, text_embeds: projected and L2-normalised
            cosine = (outputs.image_embeds * outputs.text_embeds).sum(-1)
            scores.append((100 * cosine).clamp(min=0).cpu().numpy())
    return np.concatenate(scores)


def load_pipeline(parts: PipelineParts, args: argparse.Namespace):
    from .pipeline import StarFlowPipeline

    return StarFlowPipeline.from_pretrained(
        parts, dtype="float32", device=choose_device(args.device, local_rank=0)
    )


def latent_scorer(folder: Path, args: argparse.Namespace):
    from .model import StarFlow

    device = choose_device(args.device, local_rank=0)
    flow = StarFlow.from_pretrained(folder, torch.float32, device=device).eval()

    @torch.no_grad()
    def score(latents: np.ndarray, labels: np.ndarray | None, text: np.ndarray | None) -> np.ndarray:
        condition = labels if labels is not None else text
        y = None if condition is None else torch.from_numpy(condition).to(device)
        return flow.bits_per_dim(torch.from_numpy(latents).to(device), y).double().cpu().numpy()  # NCHW

    return score


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_cli.build_parser(
        "starflow_torch.eval",
        "Evaluate samples: FID, IS, precision/recall, CLIP score, bits/dim.",
        torch=True,
    )
    backend = eval_cli.EvalBackend(inception, clip_scores, load_pipeline, "torch", latent_scorer)
    return eval_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
