"""The sample-set command line shared by `starflow-mlx-sample-eval` and `starflow-torch-sample-eval`.

    starflow-torch-sample-eval --model starflow-digits-demo -n 1000 -o samples/digits
    torchrun --nproc_per_node 8 -m starflow_torch.sample_eval --model my-imagenet-256 -o samples/in256
    starflow-torch-sample-eval --model starflow-3b-t2i-256 --prompt-file coco30k.txt -n 30000 -o samples/coco

N samples (50,000 by default), class-balanced for a label model or one per line of a prompt
file (cycled) for a text model, written as shards of uint8 images (see
starflow_core.evaluation.sample_sets). Data-parallel under torchrun (each rank its own
shards), resumable: run the same command again after a kill and only the missing shards are
made. Errors a user can cause print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from starflow_core.command_line import command_parser, positive_int, run_command
from starflow_core.evaluation import sample_sets
from starflow_core.generation.cli import Backend
from starflow_core.generation.precision import DTYPE_CHOICES, QUANTIZE_BITS
from starflow_core.sources import resolve
from starflow_core.sources.releases import DEMO_FOLDER
from starflow_core.validation import read_text
from starflow_core.version import package_version

DEFAULT_COUNT = 50_000  # FID-50K, the count published ImageNet FIDs use


def build_parser(module: str, description: str, torch: bool = False) -> argparse.ArgumentParser:
    parser = command_parser(module, description)
    parser.add_argument("--model", help="release name, pipeline folder or Hub repo id; default: the demo")
    parser.add_argument(
        "-n", "--num-samples", type=positive_int, default=DEFAULT_COUNT, help="samples in the set"
    )
    parser.add_argument(
        "--prompt-file", type=Path, help="text models: one prompt per line, sample j gets line j mod lines"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample j uses seed SEED + j")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance weight (default: the model's)")
    sampler = parser.add_mutually_exclusive_group()
    sampler.add_argument("--jacobi", action="store_true", default=None, help="block-parallel Jacobi sampling")
    sampler.add_argument("--sequential", dest="jacobi", action="store_false", help="token-by-token sampling")
    parser.add_argument("--jacobi-block-size", type=positive_int, help="tokens per Jacobi chunk (default 16)")
    parser.add_argument("--jacobi-tol", type=float, help="Jacobi convergence tolerance (default 1e-3)")
    parser.add_argument("--height", type=positive_int, help="image height (default: the model's size)")
    parser.add_argument("--width", type=positive_int, help="image width (default: the model's size)")
    parser.add_argument("--no-denoise", action="store_true", help="decode the noisy flow samples as they are")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images sampled together")
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard file")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="as for generate")
    if torch:
        parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available, per rank)")
    else:
        parser.add_argument(
            "--quantize", type=int, choices=QUANTIZE_BITS, help="quantize the flow as it loads"
        )
        parser.add_argument("--quantize-text", type=int, choices=(8,), help="quantize the T5 encoder")
    parser.add_argument("--strict", action="store_true", help="refuse checkpoints with unused tensors")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the sample set's folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def plan_for(args: argparse.Namespace, parts) -> sample_sets.SamplePlan:
    config = parts.flow_config
    label_model = config.label_conditioned or (config.family == "tarflow" and config.num_classes > 0)
    if label_model:
        if args.prompt_file is not None:
            raise ValueError("this is a class model: samples are class-balanced; drop --prompt-file")
        conditions, labels = sample_sets.class_balanced_conditions(config.num_classes), True
    elif config.txt_dim > 0:
        if args.prompt_file is None:
            raise ValueError(
                "this is a text model: give --prompt-file (one prompt per line, e.g. COCO captions)"
            )
        try:
            lines = read_text(args.prompt_file, "--prompt-file").splitlines()  # not a FIFO, UTF-8
        except OSError as err:
            raise ValueError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror or err}") from err
        conditions, labels = tuple(line.strip() for line in lines if line.strip()), False
        if not conditions:
            raise ValueError(f"--prompt-file {args.prompt_file} holds no prompts")
    else:
        if args.prompt_file is not None:
            raise ValueError("this model is unconditional; drop --prompt-file")
        conditions, labels = ("",), False
    return sample_sets.SamplePlan(args.num_samples, args.shard_size, conditions, args.seed, labels)


def run(args: argparse.Namespace, backend: Backend, framework: str) -> int:
    if args.model is None:
        args.model = str(DEMO_FOLDER)
    precision = backend.precision(args)
    parts = resolve(args.model, dtype=precision.dtype, strict=args.strict)
    plan = plan_for(args, parts)
    settings = parts.sampling.merged(
        guidance=args.cfg, jacobi=args.jacobi, block_size=args.jacobi_block_size, tol=args.jacobi_tol
    )
    manifest = {
        "format": sample_sets.FORMAT,
        "model": parts.name,
        **plan.describe(),
        "prompt_file": str(args.prompt_file) if args.prompt_file else None,
        "sampling": dataclasses.asdict(settings),
        "height": args.height,
        "width": args.width,
        "denoise": not args.no_denoise,
        "framework": framework,
        "precision": precision.metadata(),
    }
    sample_sets.prepare_folder(args.output, manifest)
    todo = sample_sets.pending_shards(args.output, plan, backend.rank, backend.world_size)
    where = f"rank {backend.rank}/{backend.world_size}: " if backend.world_size > 1 else ""
    if not todo:
        print(f"{where}{args.output}: every shard of this rank is complete ({plan.num_shards} shards)")
        return 0
    pipe = backend.load(parts, args)

    def generate(prompts: list[str], seeds: list[int]):
        result = pipe.generate(
            prompts,
            seeds=seeds,
            guidance=settings.guidance,
            jacobi=settings.jacobi,
            block_size=settings.block_size,
            tol=settings.tol,
            height=args.height,
            width=args.width,
            denoise=not args.no_denoise,
        )
        return result.uint8()

    def progress(shards: Sequence[int]):
        return tqdm(shards, desc=f"{where}shards", unit="shard", disable=args.quiet, file=sys.stderr)

    start = time.perf_counter()
    written = sample_sets.generate_shards(
        args.output, plan, generate, args.batch_size, backend.rank, backend.world_size, progress
    )
    seconds = time.perf_counter() - start
    made = sum(len(plan.indices(shard)) for shard in written)
    done = sample_sets.completed(args.output, plan)
    print(
        f"{where}wrote {len(written)} shard(s), {made} samples in {seconds:.1f} s "
        f"({made / max(seconds, 1e-9):.1f} samples/s); {done}/{plan.count} samples complete in {args.output} "
        f"(starflow {package_version()})"
    )
    return 0


def main(
    argv: Sequence[str] | None, parser: argparse.ArgumentParser, backend: Backend, framework: str
) -> int:
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command(parser.prog, lambda: run(args, backend, framework))
