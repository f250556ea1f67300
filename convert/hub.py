"""Model sources: local folders, our pipeline repos on the Hub, and the official releases.

`resolve(source)` turns a folder path, a release name (e.g. "starflow-3b-t2i-256") or
a Hub repo id into `PipelineParts` (paths on disk). Hub files are looked up in the local
cache first (`local_files_only=True`), so a complete cache needs no network; with
HF_HUB_OFFLINE=1 the network is never used. A missing file raises
`MissingModelFileError` naming the repo, the file and the `hf download` command.

An official `.pth` is converted once (convert.official: streaming, about one tensor in memory) into our
format under the conversion cache (STARFLOW_MLX_CACHE, default ~/.cache/starflow_mlx),
then reused. Framework-free: both twins call this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from .config import FlowConfig, preset
from .generation import GenerationSettings
from .official import convert_official_checkpoint
from .pipeline_folder import FLOW_CONFIG, FLOW_WEIGHTS, PipelineParts, read_pipeline_folder

__all__ = ["RELEASES", "MissingModelFileError", "OfficialRelease", "convert_official_flow", "resolve"]

VAE_PATTERNS = ("config.json", "diffusion_pytorch_model.safetensors")
T5_PATTERNS = (
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
PIPELINE_PATTERNS = ("model_index.json", "*/*.json", "*/*.safetensors", "*/spiece.model", "*/*.bin")


class MissingModelFileError(FileNotFoundError):
    """A model file is neither in the local Hugging Face cache nor downloadable now."""


@dataclasses.dataclass(frozen=True)
class OfficialRelease:
    """An official checkpoint on the Hub and the Hub repos of its VAE and text encoder."""

    name: str
    flow_repo: str
    flow_file: str
    config: FlowConfig
    vae_repo: str | None
    text_repo: str | None
    sampling: GenerationSettings
    default_prompts: tuple[str, ...] = ()


RELEASES: dict[str, OfficialRelease] = {
    "starflow-3b-t2i-256": OfficialRelease(
        name="starflow-3b-t2i-256",
        flow_repo="apple/starflow",
        flow_file="starflow_3B_t2i_256x256.pth",
        config=preset("starflow-3b-t2i-256"),
        vae_repo="stabilityai/sd-vae-ft-ema",
        text_repo="google/flan-t5-xl",
        # the official README's settings (SPEC section 4)
        sampling=GenerationSettings(guidance=3.6, jacobi=True, block_size=16, tol=1e-3, max_iter=32),
        default_prompts=("a film still of a cat playing piano",),
    ),
}
ALIASES = {
    "starflow-3b": "starflow-3b-t2i-256",
    "starflow_3B_t2i_256x256": "starflow-3b-t2i-256",
    "apple/starflow": "starflow-3b-t2i-256",
}


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
    """Names of required files missing from a snapshot folder (sharded weights included)."""
    missing = [name for name in required if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if "model.safetensors" in missing and index.is_file():
        missing.remove("model.safetensors")
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [shard for shard in shards if not (folder / shard).is_file()]
    return missing


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


# ----- official checkpoint -> our format ------------------------------------------------------
def convert_official_flow(
    pth: str | Path, config: FlowConfig, out: str | Path, dtype: str = "float32"
) -> Path:
    """Official `.pth` -> our flow folder (convert.official: strict name/shape checks, then one
    tensor at a time), written into a temporary folder renamed onto `out` when complete."""
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        convert_official_checkpoint(pth, config, staging, dtype=dtype)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def cached_official_flow(release: OfficialRelease, pth: Path) -> Path:
    """Our folder for `pth` in the conversion cache, converting only the first time. The folder
    name carries the snapshot commit and a hash of the config, so either changing reconverts."""
    digest = hashlib.sha256(json.dumps(release.config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    folder = conversion_cache_dir() / release.name / f"{pth.parent.name[:12]}-{digest}"
    if (folder / FLOW_CONFIG).is_file() and (folder / FLOW_WEIGHTS).is_file():
        return folder
    print(f"converting {pth.name} into {folder} (once; later runs reuse it)")
    return convert_official_flow(pth, release.config, folder)


# ----- sources -------------------------------------------------------------------------------
def release_by_name(name: str) -> OfficialRelease | None:
    return RELEASES.get(ALIASES.get(name, name))


def resolve_release(release: OfficialRelease) -> PipelineParts:
    flow = cached_official_flow(release, hub_file(release.flow_repo, release.flow_file))
    vae = text = None
    if release.vae_repo:
        vae = hub_snapshot(release.vae_repo, VAE_PATTERNS, VAE_PATTERNS)
    if release.text_repo:
        text = hub_snapshot(
            release.text_repo, T5_PATTERNS, ("config.json", "model.safetensors", "spiece.model")
        )
    parts = PipelineParts(
        name=release.name,
        transformer=flow,
        vae=vae,
        text_encoder=text,
        tokenizer=text,
        sampling=release.sampling,
        default_prompts=release.default_prompts,
    )
    parts.check()
    return parts


def _looks_like_repo_id(source: str) -> bool:
    pieces = source.split("/")
    return len(pieces) == 2 and all(pieces) and not source.startswith((".", "~", "/"))


def resolve(source: str | Path | PipelineParts, *, flow_config: FlowConfig | None = None) -> PipelineParts:
    """Parts of the pipeline named by `source`: a folder, a release name, or a Hub repo id
    (already resolved parts are returned as they are).

    `flow_config` replaces a release's flow configuration (keeping its repos and file
    names); tests use it to stand a tiny checkpoint in for the 3B one.
    """
    if isinstance(source, PipelineParts):
        return source
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; --model takes a pipeline folder (convert a .pth first)")
        return read_pipeline_folder(path)
    release = release_by_name(str(source))
    if release is not None:
        if flow_config is not None:
            release = dataclasses.replace(release, config=flow_config)
        return resolve_release(release)
    if _looks_like_repo_id(str(source)):
        return read_pipeline_folder(hub_snapshot(str(source), PIPELINE_PATTERNS, ("model_index.json",)))
    raise ValueError(
        f"unknown model {str(source)!r}: not an existing folder, not a release name "
        f"({', '.join(sorted(RELEASES) + sorted(ALIASES))}) and not a Hub repo id (owner/name)"
    )
