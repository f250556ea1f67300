"""The official releases we know how to run, and their one-time conversion into our format.

An official `.pth` is converted once (streaming, about one tensor in memory) into our format
under the conversion cache (STARFLOW_MLX_CACHE, default ~/.cache/starflow_mlx), then reused.
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
from starflow_core.sources.hub import T5_PATTERNS, VAE_PATTERNS, conversion_cache_dir, hub_file, hub_snapshot
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
