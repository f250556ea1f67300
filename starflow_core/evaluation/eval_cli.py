"""The evaluation command line shared by `starflow-eval` (torch) and `starflow-mlx-eval`.

    starflow-eval samples/in256 --reference VIRTUAL_imagenet256_labeled.npz --weights inception.pth
    starflow-eval samples/digits --reference digits_train.npz --features digits
    starflow-eval real_images/ --features digits --save-statistics digits_train.npz
    starflow-eval samples/coco --clip clip-vit-large-patch14/          # CLIP score of a text set
    starflow-eval held_out/ --bits-per-dim --model starflow-digits-demo --label 7

Reads the images (a sample set, an .npz with arr_0, or an image folder), computes features
(Inception pool3 and logits, or the digit stand-in) and reports FID against the reference,
Inception Score, precision/recall (k-NN manifolds, needs reference images), CLIP score and
exact bits/dim with a 95% interval. The maths is in starflow_core.evaluation.metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from starflow_core.command_line import command_parser, positive_int, run_command
from starflow_core.evaluation import digit_features, image_sets
from starflow_core.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    mean_interval,
    precision_recall,
)
from starflow_core.generation.scoring import score_images
from starflow_core.sources import resolve
from starflow_core.sources.releases import DEMO_FOLDER
from starflow_core.training.image_folders import SHARD_INDEX
from starflow_core.validation import read_shard_index
from starflow_core.version import package_version

FEATURES = ("inception", "digits")
# uint8 (n, H, W, 3) -> (features (n, D), logits (n, C) or None)
FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclasses.dataclass
class EvalBackend:
    """What differs between the twins: the Inception network, CLIP, and the pipeline for bits/dim."""

    inception: Callable[[Path | None, argparse.Namespace], FeatureFn]
    clip_scores: Callable[[Path, np.ndarray, list[str], argparse.Namespace], np.ndarray]
    load_pipeline: Callable[[Any, argparse.Namespace], Any]
    framework: str
    # flow folder -> fn(latents (B, C, h, w), labels (B,) | None, text (B, L, D) | None) -> bits (B,)
    latent_scorer: Callable[[Path, argparse.Namespace], Callable[..., np.ndarray]] | None = None


def build_parser(module: str, description: str, torch: bool = False) -> argparse.ArgumentParser:
    parser = command_parser(module, description)
    parser.add_argument(
        "samples",
        type=Path,
        help="a sample set folder, an .npz (arr_0: N,H,W,3 uint8), an image folder, or encoded latent shards (--bits-per-dim)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="statistics (.npz with mu, sigma; ADM's reference batches), an .npz of images or an image folder",
    )
    parser.add_argument(
        "--features",
        choices=FEATURES,
        default="inception",
        help="inception: the TF FID Inception-v3 (torch-fidelity's port), comparable with published numbers; "
        "digits: the 8x8 digit stand-in shipped with the demo",
    )
    parser.add_argument("--weights", type=Path, help="Inception weights file (default: torch's hub cache)")
    parser.add_argument("--k", type=positive_int, default=3, help="neighbours for precision/recall manifolds")
    parser.add_argument("--splits", type=positive_int, default=10, help="Inception Score splits")
    parser.add_argument("--batch-size", type=positive_int, default=50, help="images per feature batch")
    parser.add_argument(
        "--save-statistics", type=Path, help="write mu/sigma of the samples' features to this .npz"
    )
    parser.add_argument(
        "--clip", type=Path, help="CLIP model folder (transformers layout): CLIP score of a text set"
    )
    parser.add_argument(
        "--bits-per-dim", action="store_true", help="exact bits/dim of the images under --model"
    )
    parser.add_argument(
        "--model", help="for --bits-per-dim: release name, pipeline folder or Hub repo id (default: demo)"
    )
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument("--label", help="for --bits-per-dim of an image folder: one class for all images")
    condition.add_argument(
        "--prompt", help="for --bits-per-dim of an image folder: one prompt for all images"
    )
    if torch:
        parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("-o", "--output", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def digits_extractor() -> FeatureFn:
    return digit_features.DigitFeatures.load()


def extract(source: image_sets.ImageSource, extractor: FeatureFn, args: argparse.Namespace, what: str):
    """Features and logits of every image, plus labels and prompts where the set has them."""
    features, logits, labels, prompts = [], [], [], []
    bar = tqdm(total=source.count, desc=f"features ({what})", unit="img", disable=args.quiet, file=sys.stderr)
    for batch in source.batches(args.batch_size):
        pool, logit = extractor(batch.images)
        features.append(np.asarray(pool, dtype=np.float64))
        if logit is not None:
            logits.append(np.asarray(logit, dtype=np.float64))
        labels.append(batch.labels)
        prompts.extend(batch.prompts or [])
        bar.update(len(batch.images))
    bar.close()
    return (
        np.concatenate(features),
        np.concatenate(logits) if logits else None,
        None if any(label is None for label in labels) else np.concatenate(labels),
        prompts or None,
    )


def conditions_for(args: argparse.Namespace, source: image_sets.ImageSource, count: int) -> list[str]:
    if args.label is not None or args.prompt is not None:
        return [args.label if args.label is not None else args.prompt] * count
    labels, prompts = [], []
    for batch in source.batches(1024):
        if batch.labels is not None:
            labels.extend(str(int(label)) for label in batch.labels)
        prompts.extend(batch.prompts or [])
    return labels or prompts or [""] * count


def bits_per_dim(args: argparse.Namespace, backend: EvalBackend, source: image_sets.ImageSource) -> dict:
    parts = resolve(args.model or str(DEMO_FOLDER), dtype="float32")
    conditions = conditions_for(args, source, source.count)
    pipe = backend.load_pipeline(parts, args)
    bits, first = [], 0
    bar = tqdm(total=source.count, desc="bits/dim", unit="img", disable=args.quiet, file=sys.stderr)
    for batch in source.batches(args.batch_size):
        grey = pipe.image_channels == 1  # sets hold RGB; a grey model's images repeat one channel
        images = [Image.fromarray(image[..., 0] if grey else image) for image in batch.images]
        scores = score_images(pipe, images, conditions[first : first + len(images)], args.batch_size)
        bits.append(scores.bits_per_dim)
        first += len(images)
        bar.update(len(images))
    bar.close()
    interval = mean_interval(np.concatenate(bits))
    return {
        "bits_per_dim": interval.mean,
        "bits_per_dim_95": [interval.low, interval.high],
        "bits_per_dim_model": parts.name,
        "bits_per_dim_measures": scores.measured,
    }


def reference_statistics(
    args, extractor, results: dict
) -> tuple[FeatureStatistics | None, np.ndarray | None]:
    """(statistics, features or None): a statistics file's own mu/sigma when it has them (as ADM's
    evaluator does), features of its images when there are any (precision/recall need them)."""
    if args.reference is None:
        return None, None
    if not args.reference.exists():
        raise FileNotFoundError(f"no such --reference: {args.reference}")
    stats = FeatureStatistics.load(args.reference) if image_sets.has_statistics(args.reference) else None
    features = None
    if image_sets.has_images(args.reference):
        features = extract(image_sets.open_images(args.reference), extractor, args, "reference")[0]
    if stats is None:
        stats = FeatureStatistics.of(features)
    results["reference"] = str(args.reference)
    results["reference_count"] = stats.count
    return stats, features


def flow_folder(model: str | None) -> Path:
    """A flow folder (config.json + model.safetensors) as it is, else the pipeline's transformer."""
    if model is not None and (Path(model) / "model.safetensors").is_file():
        return Path(model)
    return resolve(model or str(DEMO_FOLDER), dtype="float32").transformer


def latent_bits_per_dim(args: argparse.Namespace, backend: EvalBackend) -> dict:
    """Exact bits/dim of encoded latent shards (encode_dataset's folders: the flow's own data),
    under their labels or text features, at the clean latents (as scoring.py measures)."""
    from safetensors.numpy import load_file

    index = read_shard_index(args.samples / SHARD_INDEX)
    folder = flow_folder(args.model)
    score = backend.latent_scorer(folder, args)
    bits = []
    for shard in tqdm(index["shards"], desc="bits/dim", unit="shard", disable=args.quiet, file=sys.stderr):
        arrays = load_file(str(args.samples / shard["file"]))
        latents = arrays["latents"].astype(np.float32)  # (N, C, h, w)
        for first in range(0, len(latents), args.batch_size):
            part = slice(first, first + args.batch_size)
            labels = arrays["label"][part].astype(np.int64) if "label" in arrays else None
            text = arrays["text"][part].astype(np.float32) if "text" in arrays else None
            bits.append(np.asarray(score(latents[part], labels, text), dtype=np.float64))
    interval = mean_interval(np.concatenate(bits))
    return {
        "samples": str(args.samples),
        "count": interval.count,
        "features": "none (latent shards)",
        "bits_per_dim": interval.mean,
        "bits_per_dim_95": [interval.low, interval.high],
        "bits_per_dim_model": str(folder),
        "bits_per_dim_measures": "exact density of the encoded latents under the flow (no added noise)",
    }


def run(args: argparse.Namespace, backend: EvalBackend) -> int:
    if (args.samples / SHARD_INDEX).is_file():  # encoded latents: only their likelihood has meaning
        if not args.bits_per_dim or args.reference or args.clip or args.save_statistics:
            raise ValueError(f"{args.samples} holds encoded latents: measure them with --bits-per-dim alone")
        return report(latent_bits_per_dim(args, backend), args, backend)
    source = image_sets.open_images(args.samples)  # every input is checked before any network loads
    for path in (args.reference, args.clip):  # --weights: the feature extractor names its file
        if path is not None and not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    extractor = backend.inception(args.weights, args) if args.features == "inception" else digits_extractor()
    results: dict[str, Any] = {"samples": str(args.samples), "count": source.count, "features": args.features}
    reference, reference_features = reference_statistics(args, extractor, results)
    features, logits, _, prompts = extract(source, extractor, args, "samples")
    stats = FeatureStatistics.of(features)
    if reference is not None:
        results["fid"] = frechet_distance(stats, reference)
    if logits is not None:
        results["inception_score"], results["inception_score_std"] = inception_score(
            logits, min(args.splits, len(logits))
        )
    if reference_features is not None:
        results["precision"], results["recall"] = precision_recall(reference_features, features, args.k)
        results["k"] = args.k
    if args.clip is not None:
        if not prompts:
            raise ValueError(f"{args.samples} has no prompts: the CLIP score needs a text model's sample set")
        images = np.concatenate([batch.images for batch in source.batches(args.batch_size)])
        results["clip_score"] = float(np.mean(backend.clip_scores(args.clip, images, prompts, args)))
    if args.bits_per_dim:
        results.update(bits_per_dim(args, backend, source))
    if args.save_statistics is not None:
        stats.save(args.save_statistics)
        results["saved_statistics"] = str(args.save_statistics)
    return report(results, args, backend)


def report(results: dict, args: argparse.Namespace, backend: EvalBackend) -> int:
    results["framework"], results["version"] = backend.framework, package_version()
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


LINES = (
    ("fid", "FID", "Frechet distance of the feature Gaussians to the reference (lower is better)"),
    ("inception_score", "Inception Score", "exp E KL(p(y|x) || p(y)) (higher: confident and varied)"),
    ("precision", "precision", "share of samples inside the reference manifold (fidelity)"),
    ("recall", "recall", "share of reference images inside the samples' manifold (coverage)"),
    ("clip_score", "CLIP score", "100 x cosine(image, prompt) in CLIP space, mean"),
    ("bits_per_dim", "bits/dim", "exact -log2 p / dims under the model, mean"),
)


def format_table(results: dict) -> str:
    lines = [f"# {results['count']} images from {results['samples']}, {results['features']} features"]
    for key, name, meaning in LINES:
        if key not in results:
            continue
        value = f"{results[key]:.4f}"
        if key == "inception_score":
            value += f" +- {results['inception_score_std']:.4f}"
        if key == "bits_per_dim":
            low, high = results["bits_per_dim_95"]
            value += f" (95%: {low:.4f} .. {high:.4f})"
        lines.append(f"{name:<16} {value:<32} {meaning}")
    if "saved_statistics" in results:
        lines.append(f"statistics written to {results['saved_statistics']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None, parser: argparse.ArgumentParser, backend: EvalBackend) -> int:
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command(parser.prog, lambda: run(args, backend))
