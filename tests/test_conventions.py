"""Conventions users bring from elsewhere: the setup's torch wheel, the spellings of mflux and
diffusers, one-line errors, the version, peak memory, threads and small printed details."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
