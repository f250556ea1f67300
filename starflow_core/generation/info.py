"""Print the generation parameters an image or video carries (or its `--metadata` JSON sidecar).

    python -m starflow_mlx.info starflow.png          # or starflow_torch.info, starflow-info
    python -m starflow_mlx.info starflow.png --json   # the parameters as JSON
    starflow-info fox.mp4                             # videos: .mp4, .gif, .webp, frame folders

Ends with a generate command that makes the image again (as `--config-from-metadata` does).
Errors (no such file, no parameters in it) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from starflow_core.command_line import command_parser, run_command
from starflow_core.generation.record import equivalent_command, read_parameters


def build_parser(module: str = "starflow_core.generation.info") -> argparse.ArgumentParser:
    """The options of `module` (this one, starflow_mlx.info or starflow_torch.info)."""
    parser = command_parser(module, "Print the generation parameters of images and videos.")
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="images or videos (.mp4, .gif, .webp, frame folders) written by generate, or .json sidecars",
    )
    parser.add_argument("--json", action="store_true", help="print the parameters as JSON")
    return parser


def describe(path: Path, as_json: bool) -> str:
    parameters = read_parameters(path)
    if as_json:
        return json.dumps(parameters, indent=2, ensure_ascii=False)
    width = max(len(key) for key in parameters)
    lines = [f"{path}:"]
    for key, value in parameters.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
        lines.append(f"  {key:<{width}}  {'-' if value is None else shown}")
    lines.append(f"  to make it again: {equivalent_command(parameters)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, module: str = "starflow_core.generation.info") -> int:
    parser = build_parser(module)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prog = parser.prog

    def body() -> int:
        texts = [describe(path, args.json) for path in args.images]  # every file checked before printing
        print("\n".join(texts))
        return 0

    return run_command(prog, body)


if __name__ == "__main__":
    sys.exit(main())
