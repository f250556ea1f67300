"""Damaged and hand-edited structured files, special files and awkward images: the inputs and
command-line cases of the file-validation fault classes (fault_cases.py runs them with the rest).

Every file a command reads is checked for shape, not only parsed: each case below is a file that
parses (or nearly) but is not what it should be, and must end in one line naming the file (exit 2).
A character device (/dev/null, a symlink to it) stands for every special file: the check that
refuses it refuses FIFOs too (a FIFO here would hang the suite if the check were removed; the
library test of refuse_special_file uses a real one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

GEN_OUT = "{ws}/out/x.png"
SIDECAR_KEYS = {"model": "tiny", "guidance": 1.0, "sampler": "sequential", "height": 8, "width": 8}


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of folder `source` made of hard links (free); replace files with `rewrite`."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def rewrite(path: Path, data: str | bytes) -> None:
    """New content for a (possibly hard-linked) file without touching the other links."""
    path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def edited_json(path: Path, **changes) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    rewrite(path, json.dumps(document))


def safetensors_bytes(header) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 64


def make_file_faults(ws: Path) -> Path:
    """The inputs of FILE_CASES under `ws` (hard-linked copies of the workspace's pipelines)."""
    index = "model_index.json"
    for name, content in {
        "mi_number": "42",
        "mi_null": "null",
        "mi_labels_string": None,
        "mi_labels_numbers": None,
        "mi_prompts_number": None,
        "mi_sampling_list": None,
        "mi_latin1": b'{"name": "caf\xe9"}',
        "mi_invalid": '{"name": ',
    }.items():
        folder = linked_copy(ws / "labels", ws / name)
        if content is not None:
            rewrite(folder / index, content)
    edited_json(ws / "mi_labels_string" / index, labels="cat")
    edited_json(ws / "mi_labels_numbers" / index, labels=[1, 2, 3])
    edited_json(ws / "mi_prompts_number" / index, default_prompts=5)
    edited_json(ws / "mi_sampling_list" / index, sampling=[1])

    config = "transformer/config.json"
    rewrite(linked_copy(ws / "labels", ws / "tc_list") / config, "[]")
    edited_json(linked_copy(ws / "labels", ws / "tc_layers_empty") / config, layers_per_block=[])
    vae = "vae/config.json"
    edited_json(linked_copy(ws / "latent", ws / "vae_blocks_empty") / vae, block_out_channels=[])
    edited_json(linked_copy(ws / "latent", ws / "vae_blocks_string") / vae, block_out_channels="32")
    edited_json(linked_copy(ws / "latent", ws / "vae_latent_string") / vae, latent_channels="4")
    rewrite(linked_copy(ws / "latent", ws / "vae_number") / vae, "3")

    weights = "transformer/model.safetensors"
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    for name, header in {
        "st_list": [entry],
        "st_no_offsets": {"w": {"dtype": "F32", "shape": [2]}},
        "st_offsets_disagree": {"w": {**entry, "shape": [4]}},
        "st_unknown_dtype": {"w": {**entry, "dtype": "Q7"}},
    }.items():
        rewrite(linked_copy(ws / "labels", ws / name) / weights, safetensors_bytes(header))

    sidecars = ws / "sidecars"
    sidecars.mkdir()
    for name, content in {
        "number": "7",
        "no_seed": {**SIDECAR_KEYS, "prompt": "cat"},
        "null_guidance": {**SIDECAR_KEYS, "guidance": None, "prompt": "cat", "seed": 1},
        "text_height": {**SIDECAR_KEYS, "height": "tall", "prompt": "cat", "seed": 1},
        "uneven_grid": {**SIDECAR_KEYS, "prompts": ["cat", "dog"], "seeds": [1]},
    }.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (sidecars / f"{name}.json").write_text(text)
    (sidecars / "latin1.json").write_bytes(b'{"prompt": "caf\xe9"}')

    yamls = ws / "yaml"
    yamls.mkdir()
    (yamls / "python_tag.yaml").write_text(
        "arguments:\n  - channels: !!python/object/apply:os.system ['true']\n"
    )
    (yamls / "syntax.yaml").write_text("arguments:\n  - channels: [1, 2\n")
    (yamls / "entry_string.yaml").write_text("arguments:\n  - channels 128\n")
    (yamls / "run_list.yaml").write_text("model: [1, 2]\ntrain: {}\n")
    (yamls / "run_syntax.yaml").write_text("train: {data: [\n")
    (yamls / "run_python.yaml").write_text("train: !!python/name:os.system\n")

    zip_bomb_pth(ws / "bomb.pth")
    make_image_faults(ws / "image_faults")
    (ws / "bad_shards").mkdir()  # an encoded data set whose index lost its shape
    (ws / "bad_shards" / "index.json").write_text(json.dumps({"in_channels": 3, "shards": "all"}))
    big_values(ws)
    text_weights = ws / "text_weights"  # a flow folder whose weights are a text file
    text_weights.mkdir()
    shutil.copy(ws / "labels" / "transformer" / "config.json", text_weights / "config.json")
    (text_weights / "model.safetensors").write_text("these are not weights\n" * 20)
    images = ws / "special_images" / "class_0"  # training data with a device among the images
    shutil.copytree(ws / "images", images.parent)
    (images / "9.png").symlink_to("/dev/null")
    return ws


def big_values(ws: Path) -> None:
    """A flow folder and an official .pth with one weight of 1e6 (float16 holds up to 65504)."""
    import torch
    from safetensors.numpy import load_file, save_file

    weights = load_file(ws / "flow" / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e6
    (ws / "big_flow").mkdir()
    shutil.copy(ws / "flow" / "config.json", ws / "big_flow" / "config.json")
    save_file(weights, ws / "big_flow" / "model.safetensors")
    state = torch.load(ws / "official.pth", weights_only=True)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name] + 1e6
    torch.save(state, ws / "big.pth")


def _gen(name: str, expect: str, *args: str, model: str = "labels") -> tuple:
    return (
        name,
        "generate",
        ("cat", "--model", f"{{ws}}/{model}", "--output", GEN_OUT, "--quiet", *args),
        expect,
    )


def _train(name: str, expect: str, *args: str) -> tuple:
    return (name, "train", ("--config", "{ws}/run.json", "--out-dir", "{ws}/run_new", *args), expect)


FILE_CASES = [
    # ----- model_index.json
    _gen("model-index-a-number", "model_index.json must be a JSON object", model="mi_number"),
    _gen("model-index-null", "model_index.json must be a JSON object", model="mi_null"),
    _gen("model-index-labels-a-string", "'labels' must be a list of strings", model="mi_labels_string"),
    _gen("model-index-labels-numbers", "'labels' must be a list of strings", model="mi_labels_numbers"),
    _gen("model-index-prompts-a-number", "'default_prompts' must be a list", model="mi_prompts_number"),
    _gen("model-index-sampling-a-list", "'sampling' must be a JSON object", model="mi_sampling_list"),
    _gen("model-index-not-utf8", "model_index.json is not UTF-8", model="mi_latin1"),
    _gen("model-index-invalid-json", "model_index.json is not valid JSON (line 1", model="mi_invalid"),
    # ----- transformer and VAE config.json
    _gen("flow-config-a-list", "transformer/config.json must be a JSON object", model="tc_list"),
    _gen("flow-config-empty-layers", "layers_per_block", model="tc_layers_empty"),
    _gen("vae-config-empty-blocks", "'block_out_channels' must be a non-empty", model="vae_blocks_empty"),
    _gen("vae-config-blocks-a-string", "'block_out_channels' must be a non-empty", model="vae_blocks_string"),
    _gen("vae-config-channels-a-string", "'latent_channels' must be an integer", model="vae_latent_string"),
    _gen("vae-config-a-number", "vae/config.json must be a JSON object", model="vae_number"),
    # ----- safetensors headers
    _gen("safetensors-header-a-list", "the safetensors header must be a JSON object", model="st_list"),
    _gen("safetensors-entry-without-offsets", "has no 'data_offsets'", model="st_no_offsets"),
    _gen("safetensors-offsets-disagree", "F32 x [4] needs 16", model="st_offsets_disagree"),
    _gen("safetensors-unknown-dtype", "unknown dtype 'Q7'", model="st_unknown_dtype"),
    # ----- image metadata sidecars
    *[
        (f"sidecar-{name}", "info", (f"{{ws}}/sidecars/{name}.json",), expect)
        for name, expect in (
            ("number", "must be a JSON object"),
            ("no_seed", "has no 'seed'"),
            ("null_guidance", "'guidance' must be a finite number, not null"),
            ("text_height", "'height' must be an integer"),
            ("uneven_grid", "2 prompts but 1 seeds"),
            ("latin1", "is not UTF-8"),
        )
    ],
    _gen(
        "generate-from-bad-sidecar", "has no 'seed'", "--config-from-metadata", "{ws}/sidecars/no_seed.json"
    ),
    # ----- official YAML and run files
    *[
        (
            f"official-yaml-{name.replace('_', '-')}",
            "convert",
            ("flow", "{ws}/official.pth", "--config", f"{{ws}}/yaml/{name}.yaml", "-o", "{ws}/new"),
            expect,
        )
        for name, expect in (
            ("python_tag", "uses the YAML tag"),
            ("syntax", "is not valid YAML (line"),
            ("entry_string", "must be a JSON object"),
        )
    ],
    (
        "run-file-list-for-a-section",
        "train",
        ("--config", "{ws}/yaml/run_list.yaml", "--out-dir", "{ws}/run_new"),
        "the model section must be a preset name or a mapping",
    ),
    (
        "run-file-broken-yaml",
        "train",
        ("--config", "{ws}/yaml/run_syntax.yaml", "--out-dir", "{ws}/run_new"),
        "is not valid YAML (line",
    ),
    (
        "run-file-python-tag",
        "train",
        ("--config", "{ws}/yaml/run_python.yaml", "--out-dir", "{ws}/run_new"),
        "uses the YAML tag",
    ),
    _train(
        "shard-index-of-the-wrong-shape", "'shards' must be a list", "--set", "train.data={ws}/bad_shards"
    ),
    _train("set-value-broken-yaml", "--set train.steps=[1", "--set", "train.steps=[1"),
    _train("set-value-python-tag", "uses the YAML tag", "--set", "train.data=!!python/name:os.system"),
    # ----- .pth archives whose pickle inflates far beyond the file
    (
        "pth-pickle-zip-bomb",
        "convert",
        ("flow", "{ws}/bomb.pth", "--config", "{ws}/official_config.json", "-o", "{ws}/new"),
        "would inflate to 83,886,080 bytes",
    ),
    # ----- numbers at the edges
    _gen("memory-limit-inf", "--memory-limit must be a finite number > 0", "--memory-limit", "inf"),
    _gen("memory-limit-nan", "--memory-limit must be a finite number > 0", "--memory-limit", "nan"),
    _gen("aspect-ratio-quotient-overflows", "cannot make an image", "--aspect-ratio", "1e300:1e-300"),
    _gen("aspect-ratio-quotient-underflows", "cannot make an image", "--aspect-ratio", "1e-300:1e300"),
    _gen("guidance-1e30", "The guidance 1e+30 is far beyond the usual range", "--cfg", "1e30"),
    (
        "convert-float16-overflow",
        "convert",
        ("flow", "{ws}/big_flow", "-o", "{ws}/new", "--dtype", "float16"),
        "beyond float16's range",
    ),
    (
        "convert-official-float16-overflow",
        "convert",
        (
            "flow",
            "{ws}/big.pth",
            "--config",
            "{ws}/official_config.json",
            "-o",
            "{ws}/new",
            "--dtype",
            "float16",
        ),
        "beyond float16's range",
    ),
    # ----- images read as training reads them
    _gen("image-decompression-bomb", "decompression bomb", "--image", "{ws}/image_faults/bomb.png"),
    (
        "score-decompression-bomb",
        "score",
        ("{ws}/image_faults/bomb.png", "--model", "{ws}/labels"),
        "decompression bomb",
    ),
    ("info-decompression-bomb", "info", ("{ws}/image_faults/bomb.png",), "decompression bomb"),
    _gen("image-32-bit-float", "is a 32-bit float image", "--image", "{ws}/image_faults/float.tif"),
    (
        "score-image-beyond-size-limit",
        "score",
        ("{ws}/image_faults/large.png", "--model", "{ws}/labels"),
        "--no-size-limit",
    ),
    # ----- results that were silently wrong
    (
        "convert-pipeline-text-as-weights",
        "convert",
        ("pipeline", "--model", "{ws}/text_weights", "-o", "{ws}/new"),
        "text_weights/model.safetensors is truncated or corrupt",
    ),
    # ----- special files in every input position: refused at once (a FIFO would block forever)
    _gen("prompt-file-a-device", "is a device", "--prompt-file", "/dev/null"),
    _gen("image-a-device", "is a device", "--image", "/dev/null"),
    _gen("mask-a-device", "is a device", "--image", "{ws}/images/class_0/0.png", "--mask", "/dev/null"),
    _train("training-image-a-device", "is a device", "--set", "train.data={ws}/special_images"),
    (
        "encode-image-a-device",
        "encode_dataset",
        (
            "--images",
            "{ws}/special_images",
            "--vae",
            "{ws}/parts/vae",
            "--conditioning",
            "label",
            "--out",
            "{ws}/new",
        ),
        "is a device",
    ),
    ("score-image-a-device", "score", ("/dev/null", "--model", "{ws}/labels"), "is a device"),
]


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height pixels (400 M: a decompression bomb) in 45 bytes."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_image_faults(folder: Path) -> Path:
    """A decompression bomb, a 32-bit float image and a 64x64 photo (8x the tiny models' side)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bomb.png").write_bytes(png_bomb())
    Image.fromarray(np.random.default_rng(0).random((8, 8), np.float32)).save(folder / "float.tif")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "large.png")
    return folder


def _damaged_state(twin: str, folder: Path, progress) -> bytes:
    """The training state of checkpoint `folder` with its progress counters replaced by `progress`."""
    import io

    if twin == "mlx":
        from safetensors import safe_open
        from safetensors.numpy import save

        with safe_open(str(folder / "training_state.safetensors"), "np") as saved:
            tensors = {name: saved.get_tensor(name) for name in saved.keys()}  # noqa: SIM118
            metadata = {**saved.metadata(), "progress": json.dumps(progress)}
        return save(tensors, metadata=metadata)
    import torch

    state = torch.load(folder / "training_state.pt", weights_only=True)
    state["progress"] = progress
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def damaged_checkpoint_files(ws: Path, twin: str, in_process: bool = False) -> list:
    """Each damaged file of a checkpoint on --resume: the message offers the previous checkpoint."""
    from .fault_scenarios import train_args
    from .fault_workspace import changes, judge, run_cli, snapshot

    run = ws / f"ckpt_files_{twin}"
    run_cli(twin, "train", train_args(ws, run.name, "--set", "train.save_every=1"), ws, in_process)
    variants = {
        "run-json-invalid": ("run.json", '{"model": '),
        "run-json-not-utf8": ("run.json", b'{"mod\xe9l": 1}'),
        "run-json-a-list": ("run.json", "[]"),
        "run-json-without-model": ("run.json", '{"train": {}}'),
        "data-json-invalid": ("data.json", "{"),
        "data-json-a-list": ("data.json", "[1]"),
    }
    state = "training_state.safetensors" if twin == "mlx" else "training_state.pt"
    step_2 = run / "checkpoints" / "step_00000002"
    variants["state-progress-a-list"] = (state, _damaged_state(twin, step_2, [1]))
    variants["state-progress-a-string"] = (state, _damaged_state(twin, step_2, {"step": "two"}))
    outcomes = []
    for name, (file, content) in variants.items():
        copy = linked_copy(run, ws / f"ckpt_{twin}_{name}")
        rewrite(copy / "checkpoints" / "step_00000002" / file, content)
        before = snapshot(ws)
        result = run_cli(twin, "train", train_args(ws, copy.name, "--resume", str(copy)), ws, in_process)
        expect = "resume from the previous checkpoint instead: --resume " + str(
            copy / "checkpoints" / "step_00000001"
        )
        outcomes.append(judge(f"checkpoint-{name}", twin, result, 2, expect, changes(before, snapshot(ws))))
    return outcomes


def zip_bomb_pth(path: Path, inflated: int = 80 * 2**20) -> Path:
    """A torch-style zip whose data.pkl (compressed) inflates to `inflated` bytes (~80 KB on disk)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as record:
            chunk = bytes(2**20)
            for _ in range(inflated // len(chunk)):
                record.write(chunk)
        archive.writestr("archive/byteorder", "little")
    return path


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG (as a full disk fails with ENOSPC), in this
    process, for the duration (a subprocess started inside inherits it)."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def first_checkpoint_fails(ws: Path, twin: str, in_process: bool = False) -> list:
    """A fresh run whose first checkpoint cannot be written (a full disk) leaves nothing behind
    that would refuse the same command; run again, it trains."""
    from .fault_scenarios import train_args
    from .fault_workspace import changes, judge, run_cli, snapshot

    args = train_args(ws, f"first_fails_{twin}")
    before = snapshot(ws)
    with file_size_limit(20_000):  # the weights (~90 KB) fail; run.json, the log and pid files fit
        result = run_cli(twin, "train", args, ws, in_process)
    outcomes = [
        judge(
            "train-first-checkpoint-fails",
            twin,
            result,
            2,
            "no earlier checkpoint exists, so the run's files are removed",
            changes(before, snapshot(ws)),
        )
    ]
    again = run_cli(twin, "train", args, ws, in_process)
    outcomes.append(judge("train-same-command-after-first-checkpoint-failed", twin, again, 0, None, []))
    return outcomes


def edit_stepwise(ws: Path, twin: str, in_process: bool = False) -> list:
    """Image-to-image with --stepwise-output-dir writes each block's picture (it wrote none)."""
    from .fault_workspace import judge, run_cli

    out = ws / f"edit_steps_{twin}"
    args = ["cat", "--model", str(ws / "labels"), "--image", str(ws / "images" / "class_0" / "0.png")]
    args += ["--seed", "1", "--output", str(out / "cat.png"), "--stepwise-output-dir", str(out / "steps")]
    result = run_cli(twin, "generate", [*args, "--quiet"], ws, in_process)
    steps = sorted((out / "steps").glob("*.png")) if (out / "steps").is_dir() else []
    missing = [] if len(steps) == 2 else [f"{len(steps)} stepwise images, expected 2 (one per block)"]
    return [judge("edit-stepwise-output", twin, result, 0, None, missing)]
