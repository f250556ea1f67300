"""The command lines as installed: names, --version, defaults in --help, the -o/--output spellings,
exit 2 for user errors, 130 for Ctrl-C in training, and no slow imports before they are needed.

Commands run in subprocesses (tests/helpers/command_probe.py, one per twin): the MLX ones
switch BLAS for their whole process, and the import checks need a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.training import TARFLOW_TINY, make_class_folder, overrides
from helpers.waiting import HANG_GUARD_S, wait_for

from starflow_core.command_line import COMMANDS, command_name
from starflow_core.generation import cli as generate_cli
from starflow_core.training.cli import parse_train_arguments
from starflow_core.training.image_folders import encode_argument_parser
from starflow_core.version import package_version

REPO = Path(__file__).resolve().parents[1]
MLX_MODULES = [m for m in COMMANDS if m.startswith("starflow_mlx.")]
# the torch twin's commands and the framework-free ones (no MLX in their process)
TORCH_MODULES = [m for m in COMMANDS if not m.startswith("starflow_mlx.")]
# one default each command's --help must show (train's options have none: they are overrides)
SHOWN_DEFAULTS = {
    "generate": ["(default: 4)", "(default: starflow.png)"],
    "encode_dataset": ["(default: 256)", "(default: text)"],
    "memory_report": [],
    "train": [],
    "convert": [],
    "info": [],
    "score": [],
    "sample_eval": ["(default: 50000)", "(default: 1000)"],
    "eval": ["(default: 3)"],
}


def probe(calls: list[tuple[str, list[str]]]) -> list[dict]:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.helpers.command_probe", json.dumps(calls)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


def user_errors(twin: str, tmp: Path) -> list[tuple[str, list[str], str]]:
    """(module, arguments, what the one line must say) for errors a user makes, per command."""
    missing = str(tmp / "missing")
    return [
        (
            f"starflow_{twin}.generate",
            ["--batch-size", "0", "-o", str(tmp / "a.png")],
            "--batch-size must be >= 1",
        ),
        (f"starflow_{twin}.generate", ["--model", missing, "x", "-o", str(tmp / "a.png")], missing),
        (f"starflow_{twin}.train", ["--config", f"{missing}.yaml"], "no run config"),
        (f"starflow_{twin}.train", ["--set", "model.preset=nonesuch"], "unknown preset 'nonesuch'"),
        (f"starflow_{twin}.train", ["--stop-at-step", "0"], "argument --stop-at-step: must be >= 1, got 0"),
        (
            f"starflow_{twin}.encode_dataset",
            ["--images", missing, "--vae", missing, "-o", str(tmp / "o")],
            missing,
        ),
        *[  # 0 looped forever (--shard-size), divided by zero (--multiple) or encoded nothing, exit 0
            (
                f"starflow_{twin}.encode_dataset",
                ["--images", missing, "--vae", missing, "-o", str(tmp / "o"), flag, "0"],
                f"argument {flag}: must be >= 1, got 0",
            )
            for flag in ("--shard-size", "--multiple", "--image-size", "--batch-size", "--txt-size")
        ],
        (f"starflow_{twin}.convert", ["flow", f"{missing}.pth", "-o", str(tmp / "c")], "no checkpoint"),
        (f"starflow_{twin}.memory_report", ["--work-dir", str(tmp / "w"), "--json"], "expected one argument"),
        (
            f"starflow_{twin}.sample_eval",
            ["-n", "0", "-o", str(tmp / "s")],
            "argument -n/--num-samples: must be >= 1",
        ),
        (
            f"starflow_{twin}.sample_eval",
            ["--prompt-file", missing, "-n", "2", "-o", str(tmp / "s")],
            "this is a class model: samples are class-balanced; drop --prompt-file",
        ),
        (f"starflow_{twin}.eval", [missing], f"no such file or folder: {missing}"),
        (
            f"starflow_{twin}.eval",
            [str(images_npz(tmp)), "--features", "digits", "--reference", f"{missing}.npz"],
            f"no such file or folder: {missing}.npz",
        ),
    ] + (
        [
            ("starflow_torch.memory_report", ["--device", "bogus"], "unknown --device 'bogus'"),
            (
                "starflow_torch.eval",
                [str(images_npz(tmp)), "--weights", f"{missing}.pth"],
                f"no Inception weights at {missing}.pth (expected weights-inception-2015-12-05-6726825d.pth from https://",
            ),
        ]
        if twin == "torch"
        else [("starflow_mlx.eval", [str(images_npz(tmp)), "--features", "inception"], "is a torch network")]
    )


def images_npz(tmp: Path) -> Path:
    """A tiny image set as ADM's evaluation suite stores one (arr_0: N, H, W, 3 uint8)."""
    path = tmp / "images.npz"
    if not path.is_file():
        import numpy as np

        np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    return path


@pytest.fixture(scope="module", params=["mlx", "torch"])
def outcomes(request, tmp_path_factory):
    """Each command's --version, --help (and convert flow --help), its user errors, in one probe."""
    twin = request.param
    tmp = tmp_path_factory.mktemp(f"commands_{twin}")
    modules = MLX_MODULES if twin == "mlx" else TORCH_MODULES
    calls = [(m, ["--version"]) for m in modules] + [(m, ["--help"]) for m in modules]
    calls += [(f"starflow_{twin}.convert", ["flow", "--help"])]
    calls += [(m, ["--no-such-option"]) for m in modules]
    errors = user_errors(twin, tmp)
    calls += [(module, argv) for module, argv, _ in errors]
    results = probe(calls)
    return twin, modules, dict(zip([json.dumps(c) for c in calls], results, strict=True)), errors


def outcome(results: dict, module: str, argv: list[str]) -> dict:
    return results[json.dumps((module, argv))]


def test_installed_names_are_the_command_table():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {name: f"{module}:main" for module, names in COMMANDS.items() for name in names}
    assert scripts == expected
    for module, names in COMMANDS.items():  # the first name says its framework and what it does
        package, command = module.split(".")[0], module.rsplit(".", 1)[1]
        framework = {"starflow_mlx": "mlx-", "starflow_torch": "torch-", "starflow_core": ""}[package]
        assert names[0] == f"starflow-{framework}{command.replace('_', '-')}"


def test_every_command_answers_version_with_its_name(outcomes):
    _, modules, results, _ = outcomes
    for module in modules:
        got = outcome(results, module, ["--version"])
        assert (got["code"], got["stdout"].strip()) == (0, f"{COMMANDS[module][0]} {package_version()}"), (
            module
        )


def test_help_is_named_after_the_command_and_shows_defaults(outcomes):
    twin, modules, results, _ = outcomes
    for module in modules:
        got = outcome(results, module, ["--help"])
        assert got["code"] == 0 and got["stdout"].startswith(f"usage: {COMMANDS[module][0]} "), module
        text = " ".join(got["stdout"].split())  # argparse wraps help text at any space
        for shown in SHOWN_DEFAULTS[module.rsplit(".", 1)[1]]:
            assert shown in text, (module, shown)
    flow_help = " ".join(outcome(results, f"starflow_{twin}.convert", ["flow", "--help"])["stdout"].split())
    assert "--group-size {32,64,128} weights sharing one quantization scale (default: 64)" in flow_help


def test_unknown_options_and_user_errors_exit_2_with_one_line(outcomes):
    _, modules, results, errors = outcomes
    for module in modules:
        got = outcome(results, module, ["--no-such-option"])
        last = got["stderr"].strip().splitlines()[-1]  # argparse: usage, then one error line
        assert got["code"] == 2 and last.startswith(f"{COMMANDS[module][0]}: error: "), (module, last)
    for module, argv, says in errors:
        got = outcome(results, module, argv)
        lines = [line for line in got["stderr"].splitlines() if line.strip()]
        assert got["code"] == 2, (module, argv, got["stderr"][-2000:])
        assert "Traceback" not in got["stderr"] and says in lines[-1], (module, argv, lines)
        if not says.startswith("argument ") and "expected one argument" not in says:  # argparse: usage first
            assert lines == [lines[-1]] and lines[-1].startswith(f"{COMMANDS[module][0]}: error: "), lines


def test_output_spellings_are_aliases():
    for module in ("starflow_mlx.generate", "starflow_torch.generate"):
        parser = generate_cli.build_parser(module, "test", torch="torch" in module)
        assert {parser.parse_args([flag, "cat.png"]).output for flag in ("-o", "--output")} == {
            Path("cat.png")
        }
    for flag in ("-o", "--output", "--out-dir"):
        _, sets = parse_train_arguments("starflow_mlx.train", "test", [flag, "runs/x"])
        assert sets == ["train.out_dir=runs/x"], flag
    parser = encode_argument_parser("starflow_torch.encode_dataset", "test")
    # named, not only reached as an abbreviation of --output (which a new --out... option would end)
    assert "-o FOLDER, --output FOLDER, --out FOLDER" in parser.format_help()
    for flag in ("-o", "--output", "--out"):
        args = parser.parse_args(["--images", "i", "--vae", "v", flag, "shards"])
        assert args.out == "shards", flag


def test_an_old_name_shows_itself(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/starflow-generate"])
    assert command_name("starflow_mlx.generate") == "starflow-generate"
    monkeypatch.setattr(sys, "argv", ["/repo/starflow_mlx/generate.py"])  # python -m
    assert command_name("starflow_mlx.generate") == "starflow-mlx-generate"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/starflow-sample"])  # another command's alias
    assert command_name("starflow_mlx.generate") == "starflow-mlx-generate"


def test_ctrl_c_in_mlx_training_saves_and_exits_130(tmp_path):
    """SIGINT (Ctrl-C) mid-run: the step in flight finishes, a checkpoint is saved, exit 130 with
    one line saying how to continue (the torch twin's SIGTERM: test_train.py)."""
    data = make_class_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    sets = [*overrides(TARFLOW_TINY, data=str(data), steps=100000), f"train.out_dir={run_dir}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "starflow_mlx.train", *[a for s in sets for a in ("--set", s)]],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (run_dir / "log.jsonl").is_file(), process, "the first logged step")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped at step" in stdout and (run_dir / "checkpoints" / "latest").is_file()
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("starflow-mlx-train: interrupted; step ") and "continue with --resume" in last


def test_torch_generation_does_not_import_diffusers_or_transformers(tmp_path):
    """They take seconds to import; the demo model needs neither (no VAE, no T5): importing the
    command, and generating with it, must leave them unimported."""
    script = (
        "import sys, json\n"
        "import starflow_torch.generate, starflow_torch.sample, starflow_torch.pipeline\n"
        "slow = ('diffusers', 'transformers')\n"
        "after_import = [m for m in slow if m in sys.modules]\n"
        f"code = starflow_torch.generate.main(['zero', '--n-images', '1', '--quiet', '-o', {str(tmp_path / 'd.png')!r}])\n"
        "print(json.dumps([after_import, [m for m in slow if m in sys.modules], code]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    after_import, after_generating, code = json.loads(completed.stdout.splitlines()[-1])
    assert after_import == [] and after_generating == [] and code == 0


def test_generation_runs_without_the_train_extra_and_training_names_it(tmp_path):
    """With mlx-data and pyyaml absent (as after `pip install starflow-mlx`), MLX generation works
    and each trainer exits 2 naming the extra to install."""
    run_json = tmp_path / "run.json"
    train = {"data": str(tmp_path / "images"), "out_dir": str(tmp_path / "r")}
    run_json.write_text(json.dumps({"model": {"preset": "tiny"}, "train": train}))
    calls = [
        ("starflow_mlx.generate", ["zero", "--n-images", "1", "--quiet", "-o", str(tmp_path / "d.png")]),
        ("starflow_mlx.train", ["--config", str(run_json)]),  # JSON: no pyyaml needed, mlx-data is
        ("starflow_mlx.train", ["--config", str(run_json), "--set", "train.lr=1e-4"]),
        ("starflow_torch.train", ["--config", str(REPO / "examples" / "digits_run.yaml")]),
    ]
    script = (
        "import json, sys\n"
        "sys.modules['yaml'] = sys.modules['mlx.data'] = None  # what an absent package looks like\n"
        "from tests.helpers.command_probe import run\n"
        f"print(json.dumps([run(m, a) for m, a in {calls!r}]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    generated, mlx_data, mlx_yaml, torch_yaml = json.loads(completed.stdout.splitlines()[-1])
    assert generated["code"] == 0 and (tmp_path / "d.png").is_file(), generated["stderr"][-2000:]
    for got, package in ((mlx_data, "mlx-data"), (mlx_yaml, "pyyaml"), (torch_yaml, "pyyaml")):
        assert got["code"] == 2 and got["stderr"].count("\n") == 1, got["stderr"]
        assert f"needs {package}" in got["stderr"] and "pip install 'starflow-mlx[train]'" in got["stderr"]
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_packaging_extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def applicable(requirements: list[str], platform: str, extra: str = "") -> dict[str, Requirement]:
        environment = {"sys_platform": platform, "platform_machine": "x86_64", "extra": extra}
        found = [Requirement(r) for r in requirements]
        return {r.name: r for r in found if r.marker is None or r.marker.evaluate(environment)}

    for platform in ("linux", "darwin"):
        base = applicable(project["dependencies"], platform)
        assert not {"mlx-data", "pyyaml", "torch", "av"} & set(base)  # generation installs without them
    assert {Requirement(r).name for r in extras["train"]} == {"mlx-data", "pyyaml"}
    assert {Requirement(r).name for r in extras["video"]} == {"av"}  # MP4; GIF and WebP need Pillow alone
    hub = Requirement(next(r for r in project["dependencies"] if r.startswith("huggingface-hub")))
    assert "0.34.0" in hub.specifier and "0.33.9" not in hub.specifier  # `hf download` arrived in 0.34
    # Linux with the cuda extra: MLX's CUDA backend and not its CPU one (they install the same library)
    linux_cuda = [applicable(project["dependencies"], "linux"), applicable(extras["cuda"], "linux", "cuda")]
    mlx_extras = set().union(*(found["mlx"].extras for found in linux_cuda if "mlx" in found))
    assert mlx_extras == {"cuda"}
    assert applicable(extras["cuda"] + extras["cpu"], "darwin") == {}  # a Mac's mlx has Metal built in
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert '-e ".[cpu,train,torch,dev,video]"' in setup  # the tests need the train and video extras


def test_encoding_refuses_sizes_below_one(tmp_path):
    """The library too (the command's argparse check aside): shard_size=0 looped forever."""
    from starflow_torch.training.encode import encode_dataset

    for name in ("shard_size", "batch_size", "multiple", "image_size", "txt_size"):
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1, got 0"):
            encode_dataset(tmp_path / "images", tmp_path / "out", None, conditioning="none", **{name: 0})
    assert not (tmp_path / "out").exists()
