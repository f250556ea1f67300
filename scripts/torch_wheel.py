"""Which index `scripts/setup.sh` installs torch from; prints pip's index arguments (or nothing).

    Linux without an NVIDIA GPU, PyTorch's CPU index reachable -> --index-url <CPU index>
    Linux with an NVIDIA GPU, or the CPU index unreachable     -> (nothing: the default index)
    macOS and everything else                                  -> (nothing: the plain wheel)

PyPI's Linux torch wheel is the CUDA build (hundreds of MB plus the CUDA packages); the CPU
index has the same version without CUDA. Runs with any Python 3 (before .venv exists).
"""

from __future__ import annotations

import os
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NVIDIA_SIGNS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl")


def has_nvidia_gpu(exists=os.path.exists) -> bool:
    """An NVIDIA driver is loaded (its /proc entry or device nodes exist)."""
    return any(exists(path) for path in NVIDIA_SIGNS)


def index_reachable(url: str = CPU_INDEX, timeout: float = 5.0) -> bool:
    """The index answers one request for torch's page within `timeout` seconds."""
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def index_arguments(system: str, nvidia: bool, reachable) -> list[str]:
    """pip arguments choosing torch's index; `reachable()` is asked only when it matters."""
    if system != "Linux" or nvidia:
        return []
    return ["--index-url", CPU_INDEX] if reachable() else []


def main() -> int:
    arguments = index_arguments(os.uname().sysname, has_nvidia_gpu(), index_reachable)
    print(" ".join(arguments))
    if not arguments and os.uname().sysname == "Linux" and not has_nvidia_gpu():
        print(f"setup: {CPU_INDEX} did not answer; torch comes from the default index", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
