"""A folder of tiny inputs, good and bad, for the adversarial cases (fault_cases.py), and the
means to run a command on it and to tell whether anything in it changed.

`run_cli` runs a command as a user does: in a subprocess, or by calling its `main` in this
process (starting torch takes seconds per subprocess). The pytest process calls the torch
twin's commands; MLX's switch BLAS process-wide, so the tests call them in one subprocess of
their own (`python -m tests.helpers.fault_cases --mlx-cases WS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from starflow_core.config import FlowConfig

from .fault_files import make_file_faults
from .tiny_components import make_tiny_vae_folder
from .tiny_pipeline import TINY_LABEL_FLOW, TINY_SETTINGS, make_flow_folder, make_label_pipeline
from .training import TARFLOW_TINY, make_class_folder
from .waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ROOT / "tests" / "fixtures" / "starflow_tiny"
# the command modules of each twin, by command
MODULES = {
    twin: {
        command: f"starflow_{twin}.{command}"
        for command in ("convert", "generate", "train", "encode_dataset", "score", "info")
    }
    for twin in ("mlx", "torch")
}
PROGRESS_BAR = re.compile(r"[\d?](it|img)/s[\],]|\ds/(it|img)[\],]|\r")  # tqdm rates: "3.2it/s]", "?img/s]"


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def make_workspace(ws: Path) -> Path:
    """Every input the cases need, under `ws` (about 5 MB, a few seconds to build)."""
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copy(OFFICIAL / "official.pth", ws / "official.pth")
    shutil.copy(OFFICIAL / "config.json", ws / "official_config.json")
    data = (OFFICIAL / "official.pth").read_bytes()
    (ws / "cut.pth").write_bytes(data[: len(data) // 2])
    torch.save({"blocks.0.proj_in.weight": torch.zeros(1), "payload": _Payload()}, ws / "evil.pth")
    (ws / "in_dir").mkdir()
    shutil.copy(OFFICIAL / "official.pth", ws / "in_dir" / "official.pth")
    (ws / "in_dir" / "notes.txt").write_text("unrelated work that must survive\n")
    (ws / "a_file").write_text("not a folder\n")

    from starflow_core.official.arguments import resolve_config
    from starflow_core.official.convert import convert_official_checkpoint

    official = resolve_config(ws / "official_config.json")
    convert_official_checkpoint(ws / "official.pth", official, ws / "flow")
    quantized = ws / "flow_q"  # what a 4-bit folder's config says (the check reads only that)
    quantized.mkdir()
    official.replace(quantization=(4, 64)).save(quantized / "config.json")
    shutil.copy(ws / "flow" / "model.safetensors", quantized / "model.safetensors")
    wrong = official.to_dict()
    wrong["channels"] = "128"
    (ws / "config_str.json").write_text(json.dumps(wrong))

    labels = make_label_pipeline(ws / "parts")
    shutil.move(labels, ws / "labels")
    edit_copy(ws / "labels", ws / "bad_sampling", "model_index.json", ("sampling", "block_size"), "4")
    edit_copy(ws / "labels", ws / "bad_config", "transformer/config.json", ("channels",), "128")
    make_latent_pipeline(ws)

    make_class_folder(ws / "images")
    broken = ws / "broken_images"
    for c in range(2):
        (broken / f"class_{c}").mkdir(parents=True)
        for i in range(4):
            (broken / f"class_{c}" / f"{i}.png").write_bytes(b"\x89PNG but not really")
    run = {
        "model": TARFLOW_TINY,
        "train": dict(
            data=str(ws / "images"),
            steps=2,
            batch_size=4,
            num_workers=0,
            warmup_steps=1,
            lr=1e-3,
            log_every=1,
        ),
    }
    (ws / "run.json").write_text(json.dumps(run))
    return make_file_faults(ws)


def edit_copy(source: Path, target: Path, file: str, keys: tuple[str, ...], value) -> None:
    """Copy pipeline `source` to `target` with one JSON value replaced (e.g. a number by a string)."""
    shutil.copytree(source, target)
    document = json.loads((target / file).read_text())
    node = document
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (target / file).write_text(json.dumps(document))


def make_latent_pipeline(ws: Path) -> Path:
    """An unconditional latent flow behind the tiny VAE (a model that can take --decoder)."""
    from starflow_core.sources.pipeline_folder import PipelineParts, write_pipeline_folder

    config = FlowConfig(
        **{
            **TINY_LABEL_FLOW.to_dict(),
            "in_channels": 4,
            "num_classes": 0,
            "txt_size": 0,
            "txt_dim": 0,
            "cond_top_only": False,
        }
    )
    make_tiny_vae_folder(ws / "parts" / "vae")
    make_flow_folder(ws / "parts" / "latent_flow", config)
    parts = PipelineParts(
        name="tiny-latent",
        transformer=ws / "parts" / "latent_flow",
        vae=ws / "parts" / "vae",
        sampling=TINY_SETTINGS,
    )
    return write_pipeline_folder(parts, ws / "latent")


def make_image_modes(folder: Path) -> Path:
    """One image of each awkward mode: 16-bit grey, RGBA, palette with transparency, 32-bit float."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "grey16.png")  # 32896 / 257 = 128
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[4:, :, 3] = 200, 255  # red; the top half fully transparent
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(rgba).convert("P").save(folder / "palette.png")
    Image.fromarray(np.random.default_rng(0).random((8, 8), np.float32)).save(folder / "float.tif")
    return folder


# ----- looking for changes ---------------------------------------------------------------
def snapshot(ws: Path) -> dict[str, str]:
    """Relative path -> content digest (or "dir") of everything under `ws`."""
    out = {}
    for path in sorted(ws.rglob("*")):
        key = str(path.relative_to(ws))
        if path.is_dir() and not path.is_symlink():
            out[key] = "dir"
        elif path.name == ".lock":
            out[key] = "lock"  # a run folder's lock: it names whoever held it last, not data
        else:
            out[key] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What was lost, changed or left behind between two snapshots."""
    lost = [f"lost {k}" for k in before if k not in after]
    changed = [f"changed {k}" for k in before if k in after and before[k] != after[k]]
    left = [f"left {k}" for k in after if k not in before]
    return lost + changed + left


# ----- running commands --------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def messages(self) -> list[str]:
        """stderr without progress bars."""
        return [line for line in self.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def environment(ws: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(ws.parent / "hf"),
        "STARFLOW_MLX_CACHE": str(ws.parent / "converted"),
        "OMP_NUM_THREADS": "1",
    }


def run_cli(twin: str, command: str, args: list[str], ws: Path, in_process: bool = False) -> Result:
    """Run `python -m <twin's command module> args` with `ws` as the working folder, in a
    subprocess or (in_process) by calling its main here. MLX commands switch BLAS process-wide:
    call them in-process only in a process that tests no torch (fault_cases --mlx-cases)."""
    module = MODULES[twin][command]
    if in_process:
        return _run_in_process(module, args, ws)
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ws,
        env=environment(ws),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def _run_in_process(module: str, args: list[str], ws: Path) -> Result:
    import importlib

    main = importlib.import_module(module).main
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        os.chdir(ws)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # a traceback, as the command line would show it
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous)
    return Result(int(code or 0), stdout.getvalue(), stderr.getvalue())


# ----- outcomes -----------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    name: str
    twin: str
    problems: list[str]  # empty: the case behaved
    traceback: bool = False
    lost: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(name: str, twin: str, result: Result, code: int, expect: str | None, lost: list[str]) -> Outcome:
    """Exit code, the one-line message, no traceback, nothing lost or left behind."""
    problems = []
    if result.code != code:
        problems.append(f"exit {result.code}, expected {code}")
    if code != 0 and (len(result.messages) != 1 or (expect and expect not in result.messages[-1])):
        problems.append(f"stderr {result.messages[-3:]!r}, expected one line with {expect!r}")
    if result.traceback:
        problems.append("traceback")
    problems += lost
    return Outcome(name, twin, problems, result.traceback, [c for c in lost if not c.startswith("left")])
