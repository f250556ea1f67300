"""Conventions users bring from elsewhere: the setup's torch wheel, the spellings of mflux and
diffusers, one-line errors, the version, peak memory, threads and small printed details."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starflow_core.generation.result import GeneratedImages

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    import starflow_mlx.pipeline as mlx_pipeline
    from starflow_core.sources.releases import DEMO_NAME

    return mlx_pipeline.StarFlowPipeline.from_pretrained(DEMO_NAME)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_takes_the_cpu_torch_index_only_on_linux_without_nvidia():
    wheel = load_script("torch_wheel")
    asked = []

    def reachable():
        asked.append(True)
        return True

    cpu = ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert wheel.index_arguments("Linux", False, reachable) == cpu
    assert wheel.index_arguments("Linux", False, lambda: False) == []  # unreachable: the default index
    asked.clear()
    assert wheel.index_arguments("Linux", True, reachable) == []  # an NVIDIA GPU: PyPI's CUDA build
    assert wheel.index_arguments("Darwin", False, reachable) == []  # a Mac: the plain wheel
    assert not asked  # the network is not asked when the answer does not depend on it
    assert wheel.has_nvidia_gpu(lambda path: path == "/proc/driver/nvidia/version")
    assert not wheel.has_nvidia_gpu(lambda path: False)
    assert not wheel.index_reachable("http://127.0.0.1:9", timeout=1)  # nothing listens on port 9


def test_setup_script_uses_the_decision_and_falls_back(tmp_path):
    """setup.sh passes what torch_wheel.py prints to pip, and retries the default index."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'read -r -a torch_index <<< "$(python3 scripts/torch_wheel.py)"' in setup
    assert '"${torch_index[@]}" "torch==2.13.0"' in setup
    assert '|| { echo "setup: the CPU index failed' in setup
    # the script's printed form is what bash splits into pip's arguments
    printed = subprocess.run(
        ["python3", "-c", "import sys; sys.argv=['x']; exec(open('scripts/torch_wheel.py').read())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert printed in ([], ["--index-url", "https://download.pytorch.org/whl/cpu"])


# ----- spellings from mflux and diffusers ---------------------------------------------------------
def test_generate_takes_the_spellings_users_know():
    from starflow_core.generation import cli as generate_cli

    parser = generate_cli.build_parser("starflow_mlx.generate", "")
    args = parser.parse_args(["a", "-m", "x", "-q", "--guidance", "2", "--stepwise-image-output-dir", "d"])
    assert (args.model, args.quiet, args.cfg, str(args.stepwise_output_dir)) == ("x", True, 2.0, "d")
    assert parser.parse_args(["--cfg", "3", "--negative-prompt", "blurry"]).cfg == 3.0
    assert parser.parse_args(["--negative-prompt", "blurry"]).negative_prompt == "blurry"


def test_negative_prompt_replaces_the_null_condition(demo):
    """For the digits model a negative prompt is a class: guidance then steers from "three" rather
    than from the null label, so the sample differs; with guidance 0 it cannot matter."""
    plain = demo.generate("eight", seeds=4, guidance=2.0, progress=False)
    steered = demo.generate("eight", seeds=4, guidance_scale=2.0, negative_prompt="three", progress=False)
    assert np.abs(plain.images - steered.images).max() > 0.05
    assert steered.parameters(0)["negative_prompt"] == "three" and "negative_prompt" not in plain.parameters(
        0
    )
    unguided = demo.generate("eight", seeds=4, guidance=0.0, negative_prompt="three", progress=False)
    np.testing.assert_array_equal(unguided.images, demo.generate("eight", seeds=4, guidance=0.0).images)
    y, y_null = demo.conditions(["eight"], True, "three")
    assert np.asarray(y_null).tolist() == [3]  # the class replaces the null label -1
    with pytest.raises(ValueError, match="disagree"):
        demo.generate("eight", seeds=4, guidance=1.0, guidance_scale=2.0)


def test_text_negative_prompt_is_the_encoding_of_that_text(tmp_path):
    import starflow_mlx.pipeline as mlx_pipeline
    from tests.helpers.tiny_pipeline import make_tiny_pipeline

    pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(make_tiny_pipeline(tmp_path))
    _, y_null = pipe.conditions(["a cat"], True, "a dog")
    dog, _ = pipe.conditions(["a dog"], False)
    np.testing.assert_array_equal(np.asarray(y_null), np.asarray(dog))
    _, empty = pipe.conditions(["a cat"], True)
    assert np.abs(np.asarray(empty) - np.asarray(dog)).max() > 0  # not the empty prompt's


# ----- progress -----------------------------------------------------------------------------------
def test_the_api_shows_progress_unless_turned_off(demo, monkeypatch):
    from starflow_core.generation.output_cli import images_bar

    seen = []
    original = type(demo).sample_flow

    def recording(self, noise, y, y_null, settings, progress, callback=None):
        seen.append(progress)
        return original(self, noise, y, y_null, settings, progress, callback)

    monkeypatch.setattr(type(demo), "sample_flow", recording)
    demo.generate("one", seeds=0)
    demo.set_progress_bar_config(disable=True)
    demo.generate("one", seeds=0)
    demo.set_progress_bar_config(disable=False)
    demo.generate("one", seeds=0, progress=False)
    assert seen == [True, False, False]  # on by default (as diffusers), off by the switch or per call
    assert not images_bar(3, quiet=False).disable and images_bar(3, quiet=True).disable


# ----- one-line errors ----------------------------------------------------------------------------
def test_argument_errors_are_one_line_with_the_way_to_help(capsys):
    from starflow_core.generation import cli as generate_cli

    parser = generate_cli.build_parser("starflow_mlx.generate", "")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--bogus"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "starflow-mlx-generate: error: unrecognized arguments: --bogus (see starflow-mlx-generate --help)"
    ]


def test_the_offline_message_keeps_its_command_lines(capsys):
    from starflow_core.command_line import run_command
    from starflow_core.sources.hub import MissingModelFileError, download_instructions

    message = "x needs files:\n  repo: a.bin\n" + download_instructions(["hf download repo a.bin"])

    def body():
        raise MissingModelFileError(message)

    assert run_command("prog", body) == 2
    err = capsys.readouterr().err
    assert "\n    hf download repo a.bin\n" in err and err.startswith("prog: error: x needs files:\n")


# ----- version, peak memory, threads, --help before torch ------------------------------------------
def test_one_version_everywhere():
    import tomllib

    from starflow_core.version import __version__, package_version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "starflow_core.version.__version__"
    }
    assert package_version() == __version__
    major, minor = (int(part) for part in __version__.split(".")[:2])
    assert (major, minor) >= (0, 2)  # messages speak of "before 0.2" and of 0.1.0's names as older


def test_peak_memory_is_bytes_on_every_platform_and_says_what_it_is():
    from starflow_core.generation.resources import describe_peak, peak_resident_memory

    assert peak_resident_memory("darwin", 5_000_000) == 5_000_000  # macOS: bytes
    assert peak_resident_memory("linux", 5_000) == 5_120_000  # Linux: KiB
    assert describe_peak(3 * 2**30, 2**29, "MLX arrays") == (
        "peak memory 3.00 GB resident (the whole process), 512 MB in MLX arrays"
    )
    assert (
        describe_peak(300 * 2**20, None, "CUDA tensors") == "peak memory 300 MB resident (the whole process)"
    )


def test_cpu_threads_leave_a_loaded_machine_alone():
    from starflow_core.generation.resources import cpu_threads

    assert cpu_threads(None, {}, cpus=16, load=0.2) == 16  # idle: every core
    assert cpu_threads(None, {}, cpus=16, load=5.6) == 10  # five to six cores busy elsewhere
    assert cpu_threads(None, {}, cpus=2, load=11.0) == 1  # overloaded: one thread, never zero
    assert cpu_threads(None, {"OMP_NUM_THREADS": "3"}, cpus=16, load=9.0) is None  # the user's setting
    assert cpu_threads(4, {"OMP_NUM_THREADS": "3"}, cpus=2, load=9.0) == 4  # --threads wins
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        cpu_threads(0, {}, cpus=2, load=0.0)


def test_torch_commands_answer_help_before_importing_torch():
    """--help must not wait for torch, diffusers or transformers (seconds on a busy machine)."""
    code = """
import contextlib, io, runpy, sys
for name in ("generate", "score", "train", "info", "convert", "encode_dataset", "memory_report"):
    sys.argv = [name, "--help"]
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        runpy.run_module("starflow_torch." + name, run_name="__main__")
    heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    print(name, heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    names = ("generate", "score", "train", "info", "convert", "encode_dataset", "memory_report")
    assert out.stdout.split("\n")[: len(names)] == [f"{name} []" for name in names], out.stdout


# ----- the memory report's work folder ------------------------------------------------------------
def test_memory_report_work_files_are_removed_and_shared_by_the_twins(tmp_path):
    import diffusers
    import torch
    from mlx.utils import tree_flatten

    from starflow_core.generation import memory_report as report
    from starflow_mlx.vae import AutoencoderKL, AutoencoderKLConfig

    root = tmp_path / "work"
    for folder, name in report.WEIGHT_FILES.items():
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_bytes(b"")
    (root / "mine.txt").write_text("not the report's")
    assert report.work_files_present(root)
    report.remove_work_files(root, created_root=False)  # a --work-dir the user gave: only ours go
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"] and not report.work_files_present(root)
    report.remove_work_files(root, created_root=True)
    assert not root.exists()
    # the VAE config either twin writes is a full diffusers config with the MLX twin's tensor names
    report.write_vae_config(tmp_path / "vae")
    config = diffusers.AutoencoderKL.load_config(tmp_path / "vae")
    with torch.device("meta"):
        names = set(diffusers.AutoencoderKL.from_config(config).state_dict())
    mlx_vae = AutoencoderKL(AutoencoderKLConfig.from_diffusers(dict(config), source="config.json"))
    assert names == {name for name, _ in tree_flatten(mlx_vae.parameters())}


def test_memory_report_options_all_have_help():
    from starflow_core.generation import memory_report as report

    for module in ("starflow_mlx.memory_report", "starflow_torch.memory_report"):  # the twins' parsers
        for action in report.build_parser(module, "")._actions:
            assert action.help and "issue" not in action.help.lower(), (module, action.option_strings)


# ----- small ones ---------------------------------------------------------------------------------
def test_info_shows_the_settings_that_applied(demo, tmp_path):
    from starflow_core.generation.info import describe

    sequential = GeneratedImages(demo.generate("two", seeds=3, progress=False)).save(tmp_path / "s.png")[0]
    table = describe(sequential, as_json=False)
    assert "jacobi_block_size" not in table and "group_size" not in table and "sampler" in table
    assert '"jacobi_block_size": 16' in describe(sequential, as_json=True)  # the JSON keeps them all
    jacobi = GeneratedImages(demo.generate("two", seeds=3, jacobi=True, progress=False)).save(
        tmp_path / "j.png"
    )
    assert "jacobi_block_size" in describe(jacobi[0], as_json=False)


def test_edit_numbers_are_stored_as_numbers(demo, tmp_path):
    from starflow_core.generation.record import read_parameters

    image = np.zeros((8, 8, 1), np.uint8)
    result = GeneratedImages(
        demo.generate(
            "two", seeds=3, image=image, mask_image=np.ones((8, 8)), inpaint_rounds=2, progress=False
        )
    )
    stored = read_parameters(result.save(tmp_path / "e.png")[0])
    assert (stored["strength"], stored["inpaint_rounds"]) == (1.0, 2)
    assert Image.open(tmp_path / "e.png").text["strength"] == "1"  # the readable entry as before


# ----- prompts x seeds: one rule for the command line and the API -------------------------------
def test_prompts_and_seeds_combine_alike_on_the_command_line_and_in_the_api(demo):
    from starflow_core.generation import cli as generate_cli
    from starflow_core.generation.inputs import combine_prompts_and_seeds

    assert combine_prompts_and_seeds(["a"], [0, 1, 2]) == (["a"] * 3, [0, 1, 2])
    assert combine_prompts_and_seeds(["a", "b"], [5]) == (["a", "b"], [5, 5])
    assert combine_prompts_and_seeds(["a", "b"], [5, 6]) == (["a", "b"], [5, 6])  # one to one
    assert combine_prompts_and_seeds(["a", "b"], [5], 2) == (["a", "a", "b", "b"], [5, 6, 5, 6])
    assert combine_prompts_and_seeds(["a", "b"], [3, 9], 2) == (["a", "a", "b", "b"], [3, 9, 3, 9])
    with pytest.raises(ValueError, match="--n-images\\) 3 to make every prompt with every seed"):
        combine_prompts_and_seeds(["a", "b"], [1, 2, 3])
    parser = generate_cli.build_parser("starflow_mlx.generate", "")
    cases = [
        (["one"], [0, 1, 2], None),
        (["one", "two"], [4], None),
        (["one", "two"], [4, 5], None),
        (["one", "two"], [4], 2),
        (["one", "two"], [3, 9], 2),
    ]
    for prompts, seeds, n_images in cases:
        argv = [*prompts, "--seed", *map(str, seeds)] + (["--n-images", str(n_images)] if n_images else [])
        args = parser.parse_args(argv)
        command_line = generate_cli.make_jobs(args, prompts, generate_cli.read_seeds(args), defaults=False)
        api = demo.generate(prompts, seeds=seeds, n_images=n_images, guidance=0.0, progress=False)
        assert command_line == list(zip(api.prompts, api.seeds, strict=True)), argv
    # the model's own default prompts (the demo's ten digits), not typed, each take every seed
    args = parser.parse_args(["--seed", "0", "1"])
    jobs = generate_cli.make_jobs(args, ["zero", "one"], generate_cli.read_seeds(args), defaults=True)
    assert jobs == [("zero", 0), ("zero", 1), ("one", 0), ("one", 1)]


def test_grids_are_remade_cell_for_cell(tmp_path):
    from starflow_core.generation.inputs import combine_prompts_and_seeds
    from starflow_core.generation.record import generate_flags

    base = {"model": "m", "guidance": 1.0, "sampler": "sequential", "height": 8, "width": 8}
    for prompts, seeds, columns in (
        (["a", "a", "b", "b"], [5, 6, 5, 6], 2),  # every prompt with the same seeds
        (["a", "b", "c"], [1, 2, 3], 1),  # one to one
        (["a", "a", "a"], [4, 8, 9], None),  # one prompt
    ):
        flags = generate_flags({**base, "prompts": prompts, "seeds": seeds, "grid_columns": columns})
        assert combine_prompts_and_seeds(flags["prompt"], flags["seed"], flags["n_images"]) == (
            prompts,
            seeds,
        )
