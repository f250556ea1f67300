"""The generation command line shared by `python -m starflow_mlx.generate` and
`python -m starflow_torch.generate`: argument parsing, then library calls.

Each twin supplies a `Backend` (how to load its pipeline, measure peak memory, and which
data-parallel rank it is). Errors a user can cause print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starflow_core.command_line import EXIT_USAGE, command_parser, run_command
from starflow_core.generation.edit_cli import (
    add_edit_arguments,
    check_edit_flags,
    edit_arguments,
    planned_edit_size,
)
from starflow_core.generation.inputs import (
    aspect_ratio_size,
    check_size,
    given_prompts,
    is_main_job,
    make_jobs,
    parse_aspect_ratio,
    rank_share,
    read_seeds,
    snap_size,
)
from starflow_core.generation.output_cli import (
    add_output_arguments,
    announce,
    fill_from_metadata,
    images_bar,
    stepwise_writer,
)
from starflow_core.generation.outputs import check_output_writable, output_directory
from starflow_core.generation.precision import DTYPE_CHOICES, QUANTIZE_BITS, TEXT_QUANTIZE_BITS, Precision
from starflow_core.generation.resource_check import (
    ModelSizes,
    check_disk,
    check_memory,
    model_sizes,
    parts_sizes,
)
from starflow_core.generation.resources import GB, RunShape, describe_peak, peak_resident_memory
from starflow_core.generation.validation import (
    MAX_IMAGES,
    MAX_SIDE_FACTOR,
    check_image_count,
    check_size_limit,
)
from starflow_core.generation.video_cli import (
    add_video_arguments,
    check_video_flags,
    default_video_output,
    generate_videos,
    is_video_output,
    video_request_flags,
    video_writer,
)
from starflow_core.generation.video_memory import check_video_memory, video_shape
from starflow_core.generation.writer import ImageWriter
from starflow_core.sources import PipelineParts, resolve
from starflow_core.sources.pipeline_folder import read_pipeline_folder
from starflow_core.sources.releases import DEMO_FOLDER, DEMO_NAME, release_by_name
from starflow_core.staging import removing_new_empty_folders
from starflow_core.validation import read_text

PRECOMPUTED_PROMPTS = 64  # up to this many distinct prompts are encoded before the flow loads
__all__ = ["EXIT_USAGE", "Backend", "build_parser", "main", "run"]


@dataclasses.dataclass
class Backend:
    """What differs between the twins' CLIs."""

    load: Callable[[PipelineParts, argparse.Namespace], Any]  # -> StarFlowPipeline
    peak_memory: Callable[[], int | None]  # bytes the framework's arrays held at most (None: not tracked)
    precision: Callable[[argparse.Namespace], Precision]  # --dtype auto resolved for the device
    memory: Callable[[argparse.Namespace], tuple[int, str]]  # bytes the arrays may use, what that is
    quantization: bool = False  # whether --quantize / --quantize-text exist
    arrays_name: str = "MLX arrays"  # what peak_memory measures, as the summary line says it
    rank: int = 0
    world_size: int = 1
    load_video: Callable[[PipelineParts, argparse.Namespace], Any] | None = None  # -> StarFlowVideoPipeline


def build_parser(module: str, description: str, torch: bool = False) -> argparse.ArgumentParser:
    """The options of `module` (starflow_mlx.generate or starflow_torch.generate)."""
    parser = command_parser(module, description)
    parser.add_argument("prompts", nargs="*", help="prompt(s); class names or indices for label models")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    parser.add_argument(
        "-m",
        "--model",
        help=f"release name (starflow-3b-t2i-256), pipeline folder, Hub repo id, or a training run "
        f"folder (its latest checkpoint); default: {DEMO_NAME} (the shipped digits model; with no "
        "prompt, seed or image: its grid of every digit with seeds 0-7)",
    )
    parser.add_argument("--decoder", type=Path, help="VAE folder / weights fine-tuned on noisy latents")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        help="seed(s): one for every prompt, or one per prompt (paired in order); with --n-images the "
        "seeds every prompt is made with (docs/generation.md)",
    )
    parser.add_argument(
        "--n-images",
        type=int,
        help="images per prompt: every prompt with seeds S, S+1, ... (S: the first --seed), or with "
        "the N seeds given",
    )
    parser.add_argument(
        "--guidance",
        "--cfg",
        dest="cfg",
        type=float,
        help="classifier-free guidance weight (default: the model's; --cfg is the same)",
    )
    parser.add_argument(
        "--negative-prompt",
        help="text guidance steers away from: its encoding replaces the empty prompt as the null "
        "condition (label models: a class)",
    )
    sampler = parser.add_mutually_exclusive_group()
    sampler.add_argument("--jacobi", action="store_true", default=None, help="block-parallel Jacobi sampling")
    sampler.add_argument("--sequential", dest="jacobi", action="store_false", help="token-by-token sampling")
    parser.add_argument("--jacobi-block-size", type=int, help="tokens per Jacobi chunk (default 16)")
    parser.add_argument("--jacobi-tol", type=float, help="Jacobi convergence tolerance (default 1e-3)")
    parser.add_argument("--jacobi-max-iter", type=int, help="Jacobi iterations per chunk at most (32)")
    parser.add_argument("--aspect-ratio", help="W:H such as 1:1, 3:2, 16:9 (area of the training size)")
    parser.add_argument("--height", type=int, help="image height in pixels")
    parser.add_argument("--width", type=int, help="image width in pixels")
    parser.add_argument("--snap", action="store_true", help="round --height/--width to valid sizes")
    parser.add_argument("--no-denoise", action="store_true", help="decode the noisy flow samples as they are")
    parser.add_argument("--batch-size", type=int, default=4, help="images sampled together")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="weights and activations (auto: bfloat16 on a GPU, float32 on CPU); the flow's scale, "
        "shift, log-det and guidance stay float32, T5 never runs in float16",
    )
    if torch:
        parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
        parser.add_argument(
            "--threads",
            type=int,
            help="CPU threads (default: OMP_NUM_THREADS when set, else the idle cores: the cores "
            "less the 1-minute load average, at least 1)",
        )
    else:
        parser.add_argument(
            "--quantize", type=int, choices=QUANTIZE_BITS, help="quantize the flow to 4 or 8 bits as it loads"
        )
        parser.add_argument(
            "--quantize-text",
            type=int,
            choices=TEXT_QUANTIZE_BITS,
            help="quantize the T5 text encoder to 8 bits",
        )
    parser.add_argument(
        "--strict", action="store_true", help="refuse checkpoints holding tensors the model does not use"
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        metavar="GB",
        help="memory the run may use, in GB (default: the machine's; the GPU's working set on a Mac)",
    )
    parser.add_argument(
        "--no-resource-check",
        action="store_true",
        help="run even if the memory or disk estimate says this machine cannot hold it",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("starflow.png"),
        help="image file (its suffix .png, .jpg, .jpeg or .webp picks the format) or folder (a name "
        "without a suffix); video models: .mp4, .gif, .webp or a folder of PNG frames (starflow.mp4 "
        "when not given); an existing file is kept and the new one named <stem>_1, _2, ...",
    )
    add_output_arguments(parser)
    parser.add_argument("--grid", action="store_true", help="write one grid image instead of one per image")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        help=f"refuse runs of more images (default {MAX_IMAGES})",
    )
    parser.add_argument(
        "--no-size-limit",
        action="store_true",
        help=f"allow sides beyond {MAX_SIDE_FACTOR}x the model's training size",
    )
    add_edit_arguments(parser)
    add_video_arguments(parser)
    return parser


# ----- requests ---------------------------------------------------------------------------
def read_prompts(args: argparse.Namespace, parts: PipelineParts) -> list[str]:
    prompts = list(args.prompts) + list(args.prompt)
    if args.prompt_file is not None:
        try:
            lines = read_text(args.prompt_file, "--prompt-file").splitlines()  # not a FIFO, UTF-8
        except OSError as err:
            raise ValueError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror or err}") from err
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise ValueError(f"--prompt-file {args.prompt_file} holds no prompts (it is empty)")
        prompts += from_file
    if not prompts:
        config = parts.flow_config
        if parts.default_prompts:
            prompts = list(parts.default_prompts)
        elif config.txt_dim == 0 and config.num_classes == 0:
            prompts = [""]  # unconditional
        else:
            raise ValueError("give a prompt (positional, --prompt or --prompt-file)")
    return prompts


def image_size(args: argparse.Namespace, parts: PipelineParts) -> tuple[int, int]:
    """(height, width) from --height/--width/--aspect-ratio, checked before any weights load."""
    config = parts.flow_config
    multiple = parts.vae_downsample * config.patch_size
    base = config.img_size * parts.vae_downsample
    for name, value in (("height", args.height), ("width", args.width)):
        if value is not None and value <= 0:  # 0 is a wrong size, not "not given"
            raise ValueError(f"--{name} must be a positive number of pixels, got {value}")
    given_height, given_width = args.height is not None, args.width is not None
    if given_height and given_width:
        if args.aspect_ratio:
            raise ValueError("give --aspect-ratio or both --height and --width, not all three")
        height, width = args.height, args.width
    elif given_height or given_width:  # the other side from the aspect ratio, rounded to a valid size
        ratio = parse_aspect_ratio(args.aspect_ratio or "1:1")
        height = (
            args.height if given_height else max(multiple, round(args.width / ratio / multiple) * multiple)
        )
        width = args.width if given_width else max(multiple, round(args.height * ratio / multiple) * multiple)
    elif args.aspect_ratio:
        height, width = aspect_ratio_size(base, args.aspect_ratio, multiple)
    else:
        height, width = base, base
    if args.snap:
        height, width = snap_size(height, width, multiple)
    check_size(height, width, multiple, f"VAE downsample {parts.vae_downsample} x patch {config.patch_size}")
    check_size_limit(height, width, base, args.no_size_limit)
    if config.uses_pos_embed and (height, width) != (base, base):
        raise ValueError(f"this model has a learned position embedding and only makes {base}x{base} images")
    return height, width


def planned_jobs(args: argparse.Namespace) -> int:
    """Images the flags ask for at most, before the model is known (default prompts count as one)."""
    prompts = len(args.prompts) + len(args.prompt)
    if args.prompt_file is not None and args.prompt_file.is_file():
        prompts += sum(
            1 for line in args.prompt_file.read_text(encoding="utf-8").splitlines() if line.strip()
        )
    seeds = len(args.seed) if args.seed and len(args.seed) > 1 else (args.n_images or 1)
    if args.n_images is None and prompts > 1:  # one to one
        return max(prompts, seeds)
    return max(prompts, 1) * max(seeds, 1)


def run_shape(args: argparse.Namespace, sizes: ModelSizes, jobs: int) -> RunShape:
    """What one batch computes, from the flags and the model's defaults (for the memory estimate)."""
    config, factor = sizes.config, sizes.vae_downsample
    side = config.img_size * factor
    height, width = (args.height or side, args.width or side) if args.height or args.width else (side, side)
    planned = planned_edit_size(args, factor * config.patch_size)  # an edit runs at its image's size
    height, width = planned or (height, width)
    check_size_limit(height, width, side, args.no_size_limit)  # the clearer error comes first
    merged = sizes.sampling.merged(guidance=args.cfg, jacobi=args.jacobi, block_size=args.jacobi_block_size)
    return RunShape(
        batch=max(1, min(args.batch_size, jobs)),
        tokens=max(1, (height // factor // config.patch_size) * (width // factor // config.patch_size)),
        pixels=height * width,
        guided=merged.guidance > 0,
        block_size=merged.block_size if merged.jacobi else 1,
    )


def check_resources(args: argparse.Namespace, backend: Backend, sizes: ModelSizes, jobs: int) -> None:
    """Memory and (for releases) first-run disk against this machine; raises before any download."""
    if args.no_resource_check:
        return
    precision = backend.precision(args)
    shape = run_shape(args, sizes, jobs)
    if args.memory_limit is not None:
        if not 0 < args.memory_limit < float("inf"):  # nan and inf too
            raise ValueError(f"--memory-limit must be a finite number > 0 GB, got {args.memory_limit}")
        available = (int(args.memory_limit * GB), "--memory-limit")
    else:
        available = backend.memory(args)
    check_memory(sizes, precision, shape, not args.no_denoise, available, backend.quantization)
    if sizes.release is not None:
        check_disk(sizes.release, precision)


# ----- the run -----------------------------------------------------------------------------
def run(args: argparse.Namespace, backend: Backend) -> int:
    fill_from_metadata(args)
    if args.model is None or not makes_video(args):  # a video's --image is its first frame
        check_edit_flags(args)
    if args.model is None:
        if not (DEMO_FOLDER / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the embedded demo model is not installed yet ({DEMO_FOLDER} is missing); "
                "pass --model starflow-3b-t2i-256 (or a pipeline folder) and a prompt"
            )
        args.model = DEMO_NAME
        if is_main_job(args) and not video_request_flags(args):  # the demo grid: a row per digit
            args.grid, args.seed, args.n_images = True, [0], 8
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    with removing_new_empty_folders(output_directory(args.output)):
        return generate(args, backend)


def makes_video(args: argparse.Namespace) -> bool:
    """Whether this run makes videos, known before anything is downloaded: video flags, a video-only
    output suffix, or a video release or pipeline folder (a Hub repo: told once it is resolved)."""
    if video_request_flags(args) or is_video_output(args.output):
        return True
    release = release_by_name(args.model)
    if release is not None:
        return release.video is not None
    folder = Path(args.model).expanduser()
    if (folder / "model_index.json").is_file():
        return read_pipeline_folder(folder).is_video
    return False


def run_video(args: argparse.Namespace, backend: Backend, parts: PipelineParts | None = None) -> int:
    """The video path: flags and output checked, memory and disk checked, then the videos."""
    check_video_flags(args)
    default_video_output(args)
    video_writer(args)  # the suffix, PyAV for .mp4 and the folder, before any download
    if parts is None:
        if not args.no_resource_check:
            check_video_resources(args, backend)
        parts = resolve(args.model, dtype=backend.precision(args).dtype, strict=args.strict)
    if not parts.is_video:
        given = video_request_flags(args) or [f"--output {args.output}"]
        raise ValueError(f"{parts.name} makes images, not videos; drop {', '.join(given)}")
    if backend.world_size > 1 and not args.seed:
        raise ValueError("give --seed under torchrun: each rank would draw its own random seeds")
    prompts, seeds = read_prompts(args, parts), read_seeds(args)
    jobs = [(p, s) for p in prompts for s in seeds]
    mine = rank_share(jobs, backend.rank, backend.world_size)
    pipe = backend.load_video(parts, args)
    return generate_videos(args, pipe, parts, prompts, seeds, mine)


def check_video_resources(args: argparse.Namespace, backend: Backend) -> None:
    """Memory (the video formula) and first-run disk of a video release, before any download."""
    release = release_by_name(args.model)
    if release is None or release.video is None:
        return
    available = (int(args.memory_limit * GB), "--memory-limit") if args.memory_limit else backend.memory(args)
    shape = video_shape(
        release, args.num_frames, args.height, args.width, args.aspect_ratio, args.cfg, args.jacobi
    )
    check_video_memory(
        release, backend.precision(args), shape, not args.no_denoise, available, backend.quantization
    )
    check_disk(release, backend.precision(args))


def generate(args: argparse.Namespace, backend: Backend) -> int:
    if makes_video(args):
        return run_video(args, backend)
    writer = ImageWriter(
        args.output,
        total=0,
        overwrite=args.overwrite,
        sidecar=args.metadata,
        rank=backend.rank,
        world_size=backend.world_size,
    )
    writer.check()
    if args.stepwise_output_dir is not None:
        check_output_writable(args.stepwise_output_dir)
    sizes = model_sizes(args.model)
    if sizes is not None:  # a release or a local folder: checked before anything is downloaded
        check_resources(args, backend, sizes, planned_jobs(args))
    if backend.world_size > 1 and not args.seed:  # the ranks must share one list of jobs
        raise ValueError("give --seed under torchrun: each rank would draw its own random seeds")
    parts = resolve(args.model, dtype=backend.precision(args).dtype, strict=args.strict)
    if parts.is_video:  # a Hub repo holding a video pipeline
        return run_video(args, backend, parts)
    if parts.description:  # a training run: which checkpoint, and EMA or model weights
        print(f"weights: {parts.description}")
    prompts, seeds = read_prompts(args, parts), read_seeds(args)
    jobs = make_jobs(args, prompts, seeds, defaults=not given_prompts(args))
    check_image_count(len(prompts), max(1, len(jobs) // len(prompts)), args.max_images)
    edit = edit_arguments(args, parts) if args.image is not None else None  # image-to-image / inpainting
    height, width = edit.size if edit else image_size(args, parts)
    writer.total = len(jobs)
    mine = rank_share(jobs, backend.rank, backend.world_size)
    if sizes is None:  # a Hub repo: its sizes are known now, before the weights load
        check_resources(args, backend, parts_sizes(parts), len(mine))
    start = time.perf_counter()
    pipe = backend.load(parts, args)
    distinct = list(dict.fromkeys(jobs[i][0] for i in mine))
    if edit and args.source_prompt is not None:  # the inversion's condition, encoded with the rest
        distinct.append(args.source_prompt)
    if args.negative_prompt:  # guidance's null condition, encoded with the rest
        distinct.append(args.negative_prompt)
    if len(distinct) <= PRECOMPUTED_PROMPTS:  # T5 loaded once and freed before the flow loads
        pipe.encode_prompts(distinct)
    overall = images_bar(len(mine), args.quiet)  # image n of N, above the per-block bars
    try:  # each image is written atomically as its batch is done; Ctrl-C keeps the complete ones
        for first in range(0, len(mine), args.batch_size):
            indices = mine[first : first + args.batch_size]
            batch_seeds = [jobs[i][1] for i in indices]
            result = pipe.generate(
                [jobs[i][0] for i in indices],
                seeds=batch_seeds,
                guidance=args.cfg,
                negative_prompt=args.negative_prompt,
                jacobi=args.jacobi,
                block_size=args.jacobi_block_size,
                tol=args.jacobi_tol,
                max_iter=args.jacobi_max_iter,
                height=height,
                width=width,
                denoise=not args.no_denoise,
                progress=not args.quiet,
                callback=stepwise_writer(args.stepwise_output_dir, pipe, indices, batch_seeds),
                **(edit.kwargs if edit else {}),
            )
            if edit:
                result.edit.update(edit.metadata)
            for row, (index, pixels) in enumerate(zip(indices, result.uint8(), strict=True)):
                if args.grid:
                    writer.add_to_grid(pixels, result.parameters(row))
                    continue
                announce(writer, writer.write_image(index, pixels, result.parameters(row)))
            overall.update(len(indices))
    except KeyboardInterrupt:
        images = [path for path in writer.written if path.suffix != ".json"]  # not the sidecars
        done = f"{len(images)} complete image(s) were written before it" if images else "no image was written"
        raise KeyboardInterrupt(done) from None
    finally:
        overall.close()
    if args.grid:
        per_prompt = len(jobs) // len(prompts)  # a row per prompt when each has the same seeds
        rows = [jobs[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        same = per_prompt * len(prompts) == len(jobs) and all(
            [p for p, _ in row] == [prompt] * per_prompt for row, prompt in zip(rows, prompts, strict=True)
        )
        columns = per_prompt if len(prompts) > 1 and same and len(mine) == len(jobs) else None
        path = writer.write_grid(columns)
        if path is not None:
            announce(writer, path)
    elapsed = time.perf_counter() - start
    memory = ", " + describe_peak(peak_resident_memory(), backend.peak_memory(), backend.arrays_name)
    count = len(mine)
    print(f"{count} image(s) in {elapsed:.1f} s ({elapsed / max(count, 1):.3g} s/image){memory}")
    return 0


def main(argv: Sequence[str] | None, parser: argparse.ArgumentParser, backend: Backend) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{parser.prog}: warning: {message}\n"
    return run_command(parser.prog, lambda: run(args, backend))
