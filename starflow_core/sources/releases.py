"""The official releases we know how to run, and their one-time conversion into our format.

An official `.pth` is converted once (streaming, about one tensor in memory) into our format,
in the dtype of the run, under the conversion cache (STARFLOW_MLX_CACHE, default
~/.cache/starflow_mlx), then reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.official.convert import convert_official_flow
from starflow_core.presets import preset
from starflow_core.sources.hub import (
    VAE_PATTERNS,
    conversion_cache_dir,
    hub_file,
    hub_snapshot,
    text_encoder_snapshot,
)
from starflow_core.sources.pipeline_folder import FLOW_CONFIG, FLOW_WEIGHTS, PipelineParts

# The embedded demo model (package data): a class-conditional STARFlow on 8x8 digits.
DEMO_NAME = "starflow-digits-demo"
DEMO_FOLDER = Path(__file__).resolve().parents[1] / "assets" / "demo"


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
    # sizes for the first-run disk check, before anything is downloaded: the VAE's weights and
    # an upper bound for the T5 encoder's shards (the whole repo's; the index, fetched with the
    # first files, picks the ones holding encoder tensors). The .pth is fp32, sized from config.
    vae_download_bytes: int = 0
    text_download_bytes: int = 0


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
        vae_download_bytes=335_000_000,  # 83.7M fp32 parameters
        text_download_bytes=11_400_000_000,  # both flan-t5-xl shards, decoder included
    ),
}


ALIASES = {
    "starflow-3b": "starflow-3b-t2i-256",
    "starflow_3B_t2i_256x256": "starflow-3b-t2i-256",
    "apple/starflow": "starflow-3b-t2i-256",
}


def cached_official_flow(
    release: OfficialRelease, pth: Path, dtype: str = "float32", strict: bool = False
) -> Path:
    """Our folder for `pth` in the conversion cache, converting only the first time, into `dtype`
    (the dtype the run uses: bf16 halves the cache). The folder name carries the snapshot
    commit, a hash of the config and the dtype, so changing any of them reconverts; an
    existing float32 conversion serves every dtype (cast while loading)."""
    found = converted_flow(release, pth, dtype)
    if found is not None:
        return found
    folder = _converted_folder(release, pth, dtype)
    print(f"converting {pth.name} into {folder} ({dtype}; once, later runs reuse it)")
    return convert_official_flow(pth, release.config, folder, dtype=dtype, strict=strict)


def converted_flow(release: OfficialRelease, pth: Path, dtype: str) -> Path | None:
    """The conversion of `pth` that a run in `dtype` uses, if it exists: its own or the float32 one."""
    for candidate in (_converted_folder(release, pth, dtype), _converted_folder(release, pth, "float32")):
        if (candidate / FLOW_CONFIG).is_file() and (candidate / FLOW_WEIGHTS).is_file():
            return candidate
    return None


def _converted_folder(release: OfficialRelease, pth: Path, dtype: str) -> Path:
    digest = hashlib.sha256(json.dumps(release.config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return conversion_cache_dir() / release.name / converted_folder_name(pth.parent.name, digest, dtype)


def converted_folder_name(commit: str, config_digest: str, dtype: str) -> str:
    """float32 keeps the name of the caches written before the dtype was chosen."""
    name = f"{commit[:12]}-{config_digest}"
    return name if dtype == "float32" else f"{name}-{dtype}"


# ----- sources -------------------------------------------------------------------------------
def release_by_name(name: str) -> OfficialRelease | None:
    return RELEASES.get(ALIASES.get(name, name))


def resolve_release(release: OfficialRelease, dtype: str = "float32", strict: bool = False) -> PipelineParts:
    """Download what is missing (flow .pth, VAE, the T5 encoder's shards) and convert the flow
    once into `dtype`; tensors the model does not use are skipped with a warning unless `strict`."""
    flow = cached_official_flow(release, hub_file(release.flow_repo, release.flow_file), dtype, strict)
    vae = text = None
    if release.vae_repo:
        vae = hub_snapshot(release.vae_repo, VAE_PATTERNS, VAE_PATTERNS)
    if release.text_repo:
        text = text_encoder_snapshot(release.text_repo)
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


# ----- what a first run writes ---------------------------------------------------------------
CONVERTED = "the converted flow"


@dataclasses.dataclass(frozen=True)
class DiskNeed:
    """Bytes a run will write under `folder` (a download or the converted flow)."""

    what: str
    size: int
    folder: Path


def first_run_disk(release: OfficialRelease, dtype: str) -> list[DiskNeed]:
    """What running `release` in `dtype` would download and write, from the caches' contents
    (nothing when everything is cached); read before any download."""
    from starflow_core.generation.resources import flow_parameters, flow_weight_bytes
    from starflow_core.sources.hub import cached_file, hub_cache_dir

    needs, hub = [], hub_cache_dir()
    pth = cached_file(release.flow_repo, release.flow_file)
    if pth is None:
        size = flow_parameters(release.config) * 4  # the released checkpoint is fp32
        needs.append(DiskNeed(f"{release.flow_repo} {release.flow_file}", size, hub))
    if pth is None or converted_flow(release, pth, dtype) is None:
        size = flow_weight_bytes(release.config, dtype)
        needs.append(DiskNeed(f"{CONVERTED} ({dtype})", size, conversion_cache_dir()))
    if release.vae_repo and cached_file(release.vae_repo, VAE_PATTERNS[-1]) is None:
        needs.append(DiskNeed(release.vae_repo, release.vae_download_bytes, hub))
    if release.text_repo and not _text_encoder_cached(release.text_repo):
        needs.append(
            DiskNeed(f"{release.text_repo} (encoder shards, at most)", release.text_download_bytes, hub)
        )
    return needs


def _text_encoder_cached(repo_id: str) -> bool:
    from starflow_core.sources.hub import cached_file
    from starflow_core.sources.t5_files import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, encoder_shards

    if cached_file(repo_id, WEIGHTS_NAME) is not None:
        return True
    index = cached_file(repo_id, WEIGHTS_INDEX_NAME)
    if index is None:
        return False
    return all(cached_file(repo_id, name) for name in encoder_shards(json.loads(index.read_text())))
