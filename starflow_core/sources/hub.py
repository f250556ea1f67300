"""Files from the Hugging Face Hub, cache first.

Hub files are looked up in the local cache first (`local_files_only=True`), so a complete
cache needs no network; with HF_HUB_OFFLINE=1 the network is never used. A missing file
raises `MissingModelFileError` naming the repo, the file and the `hf download` command.
Before downloading, one short connection attempt tells whether the Hub can be reached at
all: without a network the error comes at once, not after huggingface_hub's retries.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

VAE_PATTERNS = ("config.json", "diffusion_pytorch_model.safetensors")


# A T5 repo's small files; the weights are chosen by text_encoder_snapshot (encoder shards only).
T5_PATTERNS = (
    "config.json",
    "model.safetensors.index.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


PIPELINE_PATTERNS = ("model_index.json", "*/*.json", "*/*.safetensors", "*/spiece.model", "*/*.bin")


class MissingModelFileError(FileNotFoundError):
    """A model file is neither in the local Hugging Face cache nor downloadable now."""

    keep_lines = True  # the command lines print its `hf download` commands one per line


# ----- where things are ------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def conversion_cache_dir() -> Path:
    if os.environ.get("STARFLOW_MLX_CACHE"):
        return Path(os.environ["STARFLOW_MLX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "starflow_mlx"


def cached_file(repo_id: str, filename: str) -> Path | None:
    """The cached copy of one Hub file, or None; never touches the network."""
    import huggingface_hub

    found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


CONNECT_TIMEOUT_S = 3.0  # a reachable Hub answers a TCP connect in well under a second


def hub_unreachable_reason(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing can be downloaded now (HF_HUB_OFFLINE, or the Hub's host does not answer one
    TCP connect within `timeout`), or None when downloading may be tried."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    # in a thread: the name lookup inside create_connection ignores `timeout`
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"{host} did not answer within {timeout:.0f} s (no network?)"
    if outcome[0] is not None:
        return f"{host} cannot be reached ({outcome[0]})"
    return None


def download_command(repo_id: str, files: list[str] | tuple[str, ...]) -> str:
    """The `hf download` line that fetches `files` (exact names) of `repo_id`, or the whole repo
    when they are patterns. Names go positional, the one form every `hf` since huggingface-hub
    0.34 reads alike (`--include a b` takes b for a file name in newer ones and drops the patterns)."""
    if any(ch in name for name in files for ch in "*?["):
        return f"hf download {repo_id}"
    return f"hf download {repo_id} {' '.join(files)}"


def download_instructions(commands: list[str]) -> str:
    """How to fill the cache elsewhere: one `hf download` line per repo."""
    lines = "\n".join(f"    {command}" for command in commands)
    return (
        "Download on a machine with internet access (accept the model license on huggingface.co and "
        f"run `hf auth login` first if a repo is gated; `hf` comes with huggingface-hub >= 0.34):\n{lines}\n"
        "then point HF_HUB_CACHE at that cache."
    )


# ----- Hub downloads, cache first ----------------------------------------------------------
def _missing(
    repo_id: str, what: str, command: str, err: Exception | None, reason: str | None = None
) -> MissingModelFileError:
    reason = reason or ("HF_HUB_OFFLINE is set" if hub_offline() else f"downloading failed ({err})")
    return MissingModelFileError(
        f"{what} of the Hugging Face repo {repo_id} is not in the cache {hub_cache_dir()} and {reason}.\n"
        + download_instructions([command])
    )


def hub_file(repo_id: str, filename: str) -> Path:
    """Path of one file of a Hub repo: from the cache if there, else downloaded (unless offline)."""
    import huggingface_hub

    cache = hub_cache_dir()
    try:
        return Path(
            huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True)
        )
    except FileNotFoundError as err:  # LocalEntryNotFoundError
        error: Exception = err
    command = f"hf download {repo_id} {filename}"
    unreachable = hub_unreachable_reason()
    if unreachable:
        raise _missing(repo_id, filename, command, error, unreachable) from error
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache))
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all mean "not available"
        raise _missing(repo_id, filename, command, err) from err


def _snapshot_complete(folder: Path, required: tuple[str, ...]) -> list[str]:
    """Names of required files missing from a snapshot folder."""
    return [name for name in required if not (folder / name).is_file()]


def hub_snapshot(repo_id: str, patterns: tuple[str, ...], required: tuple[str, ...]) -> Path:
    """A snapshot folder of `repo_id` holding `required` files, from the cache when complete."""
    import huggingface_hub

    cache = hub_cache_dir()
    # the required names where the patterns are names too (optional files may not exist: `hf
    # download` fails on a missing name), else the whole repo
    command = download_command(repo_id, patterns if any("*" in p for p in patterns) else required)
    error: Exception | None = None
    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                repo_id, cache_dir=cache, allow_patterns=list(patterns), local_files_only=True
            )
        )
        missing = _snapshot_complete(folder, required)
        if not missing:
            return folder
        error = FileNotFoundError(f"the cached snapshot lacks {missing}")
    except FileNotFoundError as err:
        error = err
    unreachable = hub_unreachable_reason()
    if unreachable:
        raise _missing(repo_id, f"files {list(required)}", command, error, unreachable)
    try:
        folder = Path(
            huggingface_hub.snapshot_download(repo_id, cache_dir=cache, allow_patterns=list(patterns))
        )
    except Exception as err:  # noqa: BLE001
        raise _missing(repo_id, f"files {list(required)}", command, err) from err
    missing = _snapshot_complete(folder, required)
    if missing:
        raise _missing(repo_id, f"files {missing}", command, FileNotFoundError("not in the repo"))
    return folder


def text_encoder_snapshot(repo_id: str) -> Path:
    """A T5 snapshot holding the tokenizer, the config and only the weight files that hold
    encoder tensors: model.safetensors, or the shards the index maps encoder tensors to (the
    decoder-only shards of google/flan-t5-xl are never downloaded)."""
    from starflow_core.sources.t5_files import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, encoder_shards

    folder = hub_snapshot(repo_id, T5_PATTERNS, ("config.json", "spiece.model"))
    index = folder / WEIGHTS_INDEX_NAME
    weights = encoder_shards(json.loads(index.read_text())) if index.is_file() else [WEIGHTS_NAME]
    return hub_snapshot(repo_id, T5_PATTERNS + tuple(weights), ("config.json", "spiece.model", *weights))
