"""Files from the Hugging Face Hub, cache first.

Hub files are looked up in the local cache first (`local_files_only=True`), so a complete
cache needs no network; with HF_HUB_OFFLINE=1 the network is never used. A missing file
raises `MissingModelFileError` naming the repo, the file and the `hf download` command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


# ----- Hub downloads, cache first ----------------------------------------------------------
def _missing(repo_id: str, what: str, command: str, err: Exception | None) -> MissingModelFileError:
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else f"downloading failed ({err})"
    return MissingModelFileError(
        f"{what} of the Hugging Face repo {repo_id} is not in the cache {hub_cache_dir()} and {reason}.\n"
        f"Download it on a machine with internet access (accept the model license on huggingface.co and "
        f"run `hf auth login` first if the repo is gated):\n    {command}\n"
        "then point HF_HUB_CACHE at that cache."
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
    if not hub_offline():
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache))
        except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all mean "not available"
            error = err
    raise _missing(repo_id, filename, f"hf download {repo_id} {filename}", error) from error


def _snapshot_complete(folder: Path, required: tuple[str, ...]) -> list[str]:
    """Names of required files missing from a snapshot folder."""
    return [name for name in required if not (folder / name).is_file()]


def hub_snapshot(repo_id: str, patterns: tuple[str, ...], required: tuple[str, ...]) -> Path:
    """A snapshot folder of `repo_id` holding `required` files, from the cache when complete."""
    import huggingface_hub

    cache = hub_cache_dir()
    include = " ".join(f'"{p}"' for p in patterns)
    command = f"hf download {repo_id} --include {include}"
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
    if hub_offline():
        raise _missing(repo_id, f"files {list(required)}", command, error)
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
