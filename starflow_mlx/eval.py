"""Evaluate samples with MLX for the likelihood (`starflow-mlx-eval`): exact bits/dim, and FID,
precision/recall and the classifier score with the digit stand-in features (numpy).

    python -m starflow_mlx.eval samples/digits --reference digits_train.npz --features digits
    python -m starflow_mlx.eval held_out/ --bits-per-dim --label 7

Inception and CLIP are torch networks: `starflow-eval` (the torch twin) computes those.
See starflow_core.evaluation.eval_cli for the options.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from starflow_core.evaluation import eval_cli
from starflow_core.sources.pipeline_folder import PipelineParts

from .pipeline import StarFlowPipeline

TORCH_ONLY = "is a torch network: use starflow-eval (pip install 'starflow-mlx[torch,eval]')"


def inception(weights: Path | None, args: argparse.Namespace) -> eval_cli.FeatureFn:
    raise ValueError(f"--features inception {TORCH_ONLY}, or --features digits for 8x8 digits")


def clip_scores(folder: Path, images: np.ndarray, prompts: list[str], args: argparse.Namespace) -> np.ndarray:
    raise ValueError(f"the CLIP score {TORCH_ONLY}")


def load_pipeline(parts: PipelineParts, args: argparse.Namespace) -> StarFlowPipeline:
    return StarFlowPipeline.from_pretrained(parts, dtype="float32")


def latent_scorer(folder: Path, args: argparse.Namespace):
    import mlx.core as mx

    from .model import StarFlow

    flow = StarFlow.from_pretrained(folder, mx.float32)

    def score(latents: np.ndarray, labels: np.ndarray | None, text: np.ndarray | None) -> np.ndarray:
        condition = labels.astype(np.int32) if labels is not None else text
        y = None if condition is None else mx.array(condition)
        return np.array(flow.bits_per_dim(mx.array(latents.transpose(0, 2, 3, 1)), y))  # NHWC

    return score


def main(argv: Sequence[str] | None = None) -> int:
    parser = eval_cli.build_parser(
        "starflow_mlx.eval", "Evaluate samples: bits/dim with MLX; FID, precision/recall with digit features."
    )
    backend = eval_cli.EvalBackend(inception, clip_scores, load_pipeline, "mlx", latent_scorer)
    return eval_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
