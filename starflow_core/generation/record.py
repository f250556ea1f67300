"""The generation parameters an image carries, and the way back from them to a command.

Every image written holds one "parameters" entry (JSON: model, prompt, seed, guidance, sampler
and Jacobi settings, size, denoising, decoder, dtypes, quantization, package version), plus
readable entries for viewers (PNG tEXt; JPEG and WebP: the EXIF image description). A grid
holds "prompts" and "seeds" (its rows and columns) instead of "prompt" and "seed".
`--metadata` writes the same JSON beside the image; `--config-from-metadata` and the `info`
command read it back from either.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from starflow_core.generation.images import read_image_metadata
from starflow_core.validation import (
    FileFormatError,
    expect,
    field,
    parse_json,
    read_text,
    refuse_special_file,
)
from starflow_core.video.files import read_video_metadata, video_format

PARAMETERS_KEY = "parameters"


# ----- writing --------------------------------------------------------------------------
# what an image-to-image or inpainting run adds (starflow_core.generation.editing)
EDIT_KEYS = ("image", "strength", "mask", "inpaint_rounds", "source_prompt")
# what a video adds (its first frame given as "image" for image-to-video)
VIDEO_KEYS = ("num_frames", "fps", "aspect_ratio")


def flat_metadata(parameters: dict[str, Any]) -> dict[str, str]:
    """Image metadata entries: readable ones (as earlier versions wrote) and the JSON."""
    grid = "prompts" in parameters
    if parameters["sampler"] == "jacobi":
        sampler = (
            f"jacobi(block_size={parameters['jacobi_block_size']}, tol={parameters['jacobi_tol']:g}, "
            f"max_iter={parameters['jacobi_max_iter']})"
        )
    else:
        sampler = "sequential"
    quantized = [
        f"{what} {bits}-bit"
        for what, bits in (("flow", parameters["quantize"]), ("text encoder", parameters["text_quantize"]))
        if bits is not None
    ]
    quantization = ", ".join(quantized) + f" (group size {parameters['group_size']})" if quantized else "none"
    return {
        "model": str(parameters["model"]),
        "model_name": str(parameters["model_name"]),
        "prompt": json.dumps(parameters["prompts"]) if grid else parameters["prompt"],
        "seed": json.dumps(parameters["seeds"]) if grid else str(parameters["seed"]),
        "cfg": f"{parameters['guidance']:g}",
        "sampler": sampler,
        "steps": str(parameters["steps"]),
        "height": str(parameters["height"]),
        "width": str(parameters["width"]),
        "denoise": parameters["denoise"],
        "decoder": str(parameters["decoder"] or "none"),
        "dtype": parameters["dtype"],
        "text_dtype": parameters["text_dtype"],
        "quantization": quantization,
        "version": f"starflow-mlx {parameters['version']}",
        **{key: str(parameters[key]) for key in EDIT_KEYS if key in parameters},
        **{key: f"{parameters[key]}" for key in VIDEO_KEYS if key in parameters},
        PARAMETERS_KEY: json.dumps(parameters, ensure_ascii=False),
    }


def grid_parameters(records: list[dict[str, Any]], columns: int | None) -> dict[str, Any]:
    """One grid's parameters from its cells' (same settings, one prompt and seed each)."""
    grid = {key: value for key, value in records[0].items() if key not in ("prompt", "seed")}
    grid["prompts"] = [record["prompt"] for record in records]
    grid["seeds"] = [record["seed"] for record in records]
    grid["grid_columns"] = columns
    grid["steps"] = max(record["steps"] for record in records)
    return grid


def parameters_json(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, indent=2, ensure_ascii=False) + "\n"


# ----- reading ----------------------------------------------------------------------------
def read_parameters(path: str | Path) -> dict[str, Any]:
    """The parameters of an image or video written by this project, or of its JSON sidecar."""
    path = Path(path)
    refuse_special_file(path, "the image")
    if not (path.is_file() or path.is_dir()):
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_file() and path.suffix.lower() == ".json":
        text = read_text(path, "the sidecar")
    else:
        video = path.is_dir() or video_format(path) in ("MP4", "GIF", "WEBP")
        metadata = read_video_metadata(path) if video else read_image_metadata(path)
        text = metadata.get(PARAMETERS_KEY)
        if text is None:
            raise ValueError(
                f"{path} holds no STARFlow generation parameters (made elsewhere, or by a version "
                "before 0.2, or its metadata was stripped); give an image or video written by starflow "
                "generate or its .json sidecar"
            )
    return check_parameters(parse_json(text, f"{path}: its generation parameters", _FIX), str(path))


_FIX = "give an image or video written by starflow generate or its .json sidecar, unedited"
# key -> kind (starflow_core.validation), for the keys that making the image again reads
_REQUIRED = {
    "model": "string",
    "guidance": "number",
    "sampler": "string",
    "height": "integer",
    "width": "integer",
}
_OPTIONAL = {
    "jacobi_block_size": "integer",
    "jacobi_tol": "number",
    "jacobi_max_iter": "integer",
    "denoise": "string",
    "decoder": "string",
    "dtype": "string",
    "quantize": "integer",
    "text_quantize": "integer",
    "image": "string",
    "strength": "numeric",  # an edit's entries are recorded as the strings of its PNG text
    "mask": "string",
    "inpaint_rounds": "numeric",
    "source_prompt": "string",
    "num_frames": "integer",
    "fps": "number",
}


def check_parameters(parameters: Any, source: str) -> dict[str, Any]:
    """Generation parameters checked for shape: every key a command reads of the right type, a
    prompt and a seed (or as many prompts as seeds, for a grid)."""
    expect(parameters, "object", f"{source}: its generation parameters", _FIX)
    for key, kind in _REQUIRED.items():
        field(parameters, key, kind, source, _FIX)
    for key, kind in _OPTIONAL.items():
        field(parameters, key, kind, source, _FIX, default=None, nullable=True)
    if "prompts" in parameters:
        prompts = field(parameters, "prompts", "strings", source, _FIX)
        seeds = field(parameters, "seeds", "integers", source, _FIX)
        if len(prompts) != len(seeds) or not prompts:
            raise FileFormatError(
                f"{source} holds {len(prompts)} prompts but {len(seeds)} seeds (one per image); {_FIX}"
            )
    else:
        field(parameters, "prompt", "string", source, _FIX)
        field(parameters, "seed", "integer", source, _FIX)
    return parameters


def prompts_and_seeds(parameters: dict[str, Any]) -> tuple[list[str], list[int], bool]:
    """(prompts, seeds, grid) that remake the image(s): every prompt with every seed, in order."""
    if "prompts" not in parameters:
        return [parameters["prompt"]], [int(parameters["seed"])], False
    pairs = list(zip(parameters["prompts"], parameters["seeds"], strict=True))
    prompts = list(dict.fromkeys(p for p, _ in pairs))
    seeds = list(dict.fromkeys(int(s) for _, s in pairs))
    if [(p, s) for p in prompts for s in seeds] != pairs:
        raise ValueError(
            "this grid holds a share of a larger run (one rank's images under torchrun), not every "
            "prompt with every seed; regenerate its images one by one with --prompt and --seed"
        )
    return prompts, seeds, True


# ----- as a command ---------------------------------------------------------------------
def generate_flags(parameters: dict[str, Any]) -> dict[str, Any]:
    """Command-line argument values (argparse dests) that remake the image(s)."""
    prompts, seeds, grid = prompts_and_seeds(parameters)
    return {
        "model": parameters["model"],
        "prompt": prompts,
        "seed": seeds,
        "cfg": float(parameters["guidance"]),
        "jacobi": parameters["sampler"] == "jacobi",
        "jacobi_block_size": parameters.get("jacobi_block_size"),
        "jacobi_tol": parameters.get("jacobi_tol"),
        "jacobi_max_iter": parameters.get("jacobi_max_iter"),
        "height": int(parameters["height"]),
        "width": int(parameters["width"]),
        "no_denoise": parameters.get("denoise") == "none",
        "decoder": parameters.get("decoder"),
        "dtype": parameters.get("dtype"),
        "quantize": parameters.get("quantize"),
        "quantize_text": parameters.get("text_quantize"),
        "grid": grid,
        **edit_flags(parameters),
        **{key: parameters[key] for key in VIDEO_KEYS if key in parameters},
    }


def edit_flags(parameters: dict[str, Any]) -> dict[str, Any]:
    """The image-to-image / inpainting flags of an edited image (none for a generated one)."""
    if "image" not in parameters:
        return {}
    mask = parameters.get("mask")
    boxed = isinstance(mask, str) and mask.startswith("box ")
    rounds = parameters.get("inpaint_rounds")
    return {
        "image": Path(parameters["image"]),
        "strength": float(parameters["strength"]) if "strength" in parameters else None,
        "mask": None if mask is None or boxed else Path(mask),
        "mask_box": mask[len("box ") :] if boxed else None,
        "source_prompt": parameters.get("source_prompt"),
        "inpaint_rounds": int(rounds) if rounds is not None else None,
    }


def equivalent_command(parameters: dict[str, Any]) -> str:
    """A generate command line that makes the image(s) or video again (for `info`)."""
    flags = generate_flags(parameters)
    module = "starflow_torch.generate" if parameters.get("framework") == "torch" else "starflow_mlx.generate"
    words = ["python", "-m", module]
    for prompt in flags["prompt"]:
        words += ["--prompt", prompt]
    words += ["--model", flags["model"], "--seed"]
    words += [str(seed) for seed in flags["seed"]]
    words += ["--cfg", f"{flags['cfg']:g}"]
    if flags["jacobi"]:
        words += ["--jacobi", "--jacobi-block-size", str(flags["jacobi_block_size"])]
        words += [
            "--jacobi-tol",
            f"{flags['jacobi_tol']:g}",
            "--jacobi-max-iter",
            str(flags["jacobi_max_iter"]),
        ]
    else:
        words.append("--sequential")
    words += ["--height", str(flags["height"]), "--width", str(flags["width"])]
    if flags["no_denoise"]:
        words.append("--no-denoise")
    if flags["decoder"]:
        words += ["--decoder", str(flags["decoder"])]
    if flags["dtype"]:
        words += ["--dtype", flags["dtype"]]
    if flags["quantize"] is not None:
        words += ["--quantize", str(flags["quantize"])]
    if flags["quantize_text"] is not None:
        words += ["--quantize-text", str(flags["quantize_text"])]
    if flags["grid"]:
        words.append("--grid")
    for name in ("image", "strength", "mask", "mask_box", "source_prompt", "inpaint_rounds", *VIDEO_KEYS):
        if flags.get(name) is not None:
            words += [
                "--" + name.replace("_", "-"),
                f"{flags[name]:g}" if name == "strength" else str(flags[name]),
            ]
    return shlex.join(words)
