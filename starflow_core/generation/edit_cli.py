"""The generate command's image-to-image and inpainting flags (--image, --strength, --mask,
--mask-box, --source-prompt, --inpaint-rounds): parsing and checks, before any weights load.

Kept apart from cli.py so the shared command line only adds the flags, calls
`check_edit_flags` first and `edit_arguments` once the model's parts are known.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.edit_inputs import (
    box_mask,
    check_strength,
    native_size,
    parse_mask_box,
    prepare_images,
    prepare_masks,
    undo_enlargement,
)
from starflow_core.generation.editing import DEFAULT_ROUNDS
from starflow_core.generation.images import VIEWING_SIDE
from starflow_core.generation.inputs import check_size, snap_size
from starflow_core.generation.validation import check_size_limit
from starflow_core.sources.pipeline_folder import PipelineParts

EDIT_FLAGS = ("mask", "mask_box", "strength", "source_prompt", "inpaint_rounds")


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image-to-image and inpainting (docs/editing.md)")
    group.add_argument(
        "--image", type=Path, help="edit this image: image-to-image, or inpainting with --mask"
    )
    group.add_argument(
        "--strength", type=float, help="0 keeps the image, 1 regenerates it (default 0.8; 1 with a mask)"
    )
    masks = group.add_mutually_exclusive_group()
    masks.add_argument("--mask", type=Path, help="inpainting mask, white = regenerate (resized to the image)")
    masks.add_argument("--mask-box", help="inpainting rectangle x0,y0,x1,y1 in pixels (x1, y1 exclusive)")
    group.add_argument("--source-prompt", help="the prompt describing --image (default: the prompt)")
    group.add_argument(
        "--inpaint-rounds", type=int, help=f"re-inversion rounds of inpainting (default {DEFAULT_ROUNDS})"
    )


def check_edit_flags(args: argparse.Namespace) -> None:
    """Flag combinations, checked before anything is loaded or written."""
    if args.image is None:
        given = [name for name in EDIT_FLAGS if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} edits an image: give --image PATH as well")
        return
    if args.strength is not None:
        check_strength(args.strength)
    if args.inpaint_rounds is not None and args.inpaint_rounds < 1:
        raise ValueError(f"--inpaint-rounds must be >= 1, got {args.inpaint_rounds}")
    if args.aspect_ratio:
        raise ValueError(
            "--aspect-ratio does not apply to --image (the image sets the size); use --height/--width"
        )
    if (args.height is None) != (args.width is None):
        raise ValueError("to resize --image give both --height and --width")


def planned_edit_size(args: argparse.Namespace, multiple: int) -> tuple[int, int] | None:
    """(height, width) the edit will run at, from --image's header alone (rounded to the model's
    size step as prepare_images does), for the memory estimate before the model is known. None
    when there is no image, --height/--width decide, or the file cannot be read yet (the clear
    error comes when the image is read for the edit)."""
    if args.image is None or args.height is not None:
        return None
    from PIL import Image

    try:
        with Image.open(args.image) as image:
            width, height = image.size
            if max(width, height) <= 4 * VIEWING_SIDE:  # small: maybe enlarged for viewing by this tool
                pixels, _ = undo_enlargement(np.asarray(image), native_size(image))
                height, width = pixels.shape[:2]
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return tuple(max(multiple, int(round(side / multiple)) * multiple) for side in (height, width))


@dataclasses.dataclass(frozen=True)
class EditArguments:
    kwargs: dict[str, Any]  # for StarFlowPipeline.generate
    metadata: dict[str, str]  # added to each PNG's tEXt entries
    size: tuple[int, int]  # (height, width) of the outputs


def edit_arguments(args: argparse.Namespace, parts: PipelineParts) -> EditArguments:
    """Read --image and the mask into the edit's generate arguments, metadata and size.

    The image sets the size (rounded to the model's size step, or --height/--width); the
    mask is resized to it. Notes about conversions are warnings, said once here."""
    config = parts.flow_config
    multiple = parts.vae_downsample * config.patch_size
    size = None
    if args.height is not None:
        size = snap_size(args.height, args.width, multiple) if args.snap else (args.height, args.width)
        check_size(*size, multiple, f"VAE downsample {parts.vae_downsample} x patch {config.patch_size}")
    image = prepare_images(args.image, 1, parts.image_channels, size, multiple)[0]  # (H, W, C)
    height, width = image.shape[:2]
    base = config.img_size * parts.vae_downsample
    check_size_limit(height, width, base, args.no_size_limit)  # a large photo is refused as a large --height
    if config.uses_pos_embed and (height, width) != (base, base):
        raise ValueError(
            f"this model has a learned position embedding and only edits {base}x{base} images; "
            f"resize --image or pass --height {base} --width {base}"
        )
    metadata = {"image": str(args.image.resolve())}  # absolute: remade from any working folder
    mask = None
    if args.mask is not None:
        mask = prepare_masks(args.mask, 1, height, width)[0]
        metadata["mask"] = str(args.mask.resolve())
    elif args.mask_box is not None:
        mask = box_mask(parse_mask_box(args.mask_box), height, width)
        metadata["mask"] = f"box {args.mask_box}"
    kwargs = {
        "image": image,
        "strength": args.strength,
        "mask_image": mask,
        "source_prompt": args.source_prompt,
    }
    if args.inpaint_rounds is not None:
        kwargs["inpaint_rounds"] = args.inpaint_rounds
    return EditArguments(kwargs, metadata, (height, width))
