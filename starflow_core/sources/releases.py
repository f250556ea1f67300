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
from starflow_core.video.settings import VideoDefaults

# The video values of configs/starflow-v_7B_t2v_caus_480p.yaml (its flow values: the preset):
# vid_size '81:16', fps_cond 1, cond_noise_level 1, mix_aspect 1, vae 'Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6'
STARFLOW_V_7B_VIDEO = VideoDefaults(
    num_frames=81, fps=16, fps_cond=True, cond_noise_level=True, mix_aspect=True, temporal_scale=0.6
)

# The embedded demo models (package data): a class-conditional STARFlow on 8x8 digits, and a
# label-conditioned STARFlow-V on 8-frame clips of those digits moving over a 16x16 canvas.
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_NAME = "starflow-digits-demo"
DEMO_FOLDER = ASSETS / "demo"
VIDEO_DEMO_NAME = "starflow-moving-digits-demo"
VIDEO_DEMO_FOLDER = ASSETS / "moving_digits_demo"
EMBEDDED = {DEMO_NAME: DEMO_FOLDER, VIDEO_DEMO_NAME: VIDEO_DEMO_FOLDER}


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
    # the VAE's files in its repo (a diffusers pipeline repo keeps it under vae/)
    vae_files: tuple[str, ...] = VAE_PATTERNS
    # video releases: clip length, rate, prompt template and the VAE's temporal scale (official YAML)
    video: VideoDefaults | None = None

    @property
    def vae_folder(self) -> str:
        """The VAE's folder inside its repo's snapshot ("" for the repo root)."""
        return str(Path(self.vae_files[0]).parent).replace(".", "", 1) if self.vae_files else ""


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
    # STARFlow-V 7B: the file name the official README and scripts/test_sample_video.sh load, the
    # official YAML's values (preset and STARFLOW_V_7B_VIDEO) and the sampling settings of
    # test_sample_video.sh (cfg 3.5, Jacobi, threshold
    # 0.001, block size 32, 81 frames at 16 fps, 16:9)
    "starflow-v-7b-t2v-480p": OfficialRelease(
        name="starflow-v-7b-t2v-480p",
        flow_repo="apple/starflow",
        flow_file="starflow-v_7B_t2v_caus_480p_v3.pth",
        config=preset("starflow-v-7b-t2v-480p"),
        vae_repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        text_repo="google/flan-t5-xl",
        sampling=GenerationSettings(guidance=3.5, jacobi=True, block_size=32, tol=1e-3, max_iter=32),
        default_prompts=("a corgi dog looks at the camera",),
        vae_download_bytes=2_820_000_000,  # 704.7M fp32 parameters
        text_download_bytes=11_400_000_000,
        vae_files=("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
        video=STARFLOW_V_7B_VIDEO,
    ),
}


ALIASES = {
    "starflow-v-7b": "starflow-v-7b-t2v-480p",
    "starflow-v_7B_t2v_caus_480p_v3": "starflow-v-7b-t2v-480p",
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


def missing_release_files(release: OfficialRelease) -> dict[str, tuple[list[str], str]]:
    """What of `release` the Hugging Face cache lacks, read from the cache alone:
    repo -> (the missing files, the `hf download` command that fetches them)."""
    from starflow_core.sources.hub import cached_file, download_command
    from starflow_core.sources.t5_files import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, encoder_shards

    missing: dict[str, tuple[list[str], str]] = {}
    if cached_file(release.flow_repo, release.flow_file) is None:
        missing[release.flow_repo] = (
            [release.flow_file],
            download_command(release.flow_repo, [release.flow_file]),
        )
    if release.vae_repo:
        files = [name for name in release.vae_files if cached_file(release.vae_repo, name) is None]
        if files:
            missing[release.vae_repo] = (files, download_command(release.vae_repo, release.vae_files))
    if release.text_repo:
        repo, required = release.text_repo, ["config.json", "spiece.model"]
        files = [name for name in required if cached_file(repo, name) is None]
        wanted = [*required, WEIGHTS_INDEX_NAME]  # names only: `hf download` fails on a name the repo lacks
        index = cached_file(repo, WEIGHTS_INDEX_NAME)
        if index is not None:  # the shards holding encoder tensors, by name
            shards = encoder_shards(json.loads(index.read_text()))
            files += [name for name in shards if cached_file(repo, name) is None]
            wanted += shards
        elif cached_file(repo, WEIGHTS_NAME) is not None:
            wanted = required  # a single weight file, cached
        else:
            # which shards hold the encoder is in the index: once it is cached, a second run names them
            files.append(
                f"the encoder weight shards that {WEIGHTS_INDEX_NAME} lists (a run after this download names them)"
            )
        if files:
            missing[repo] = (files, download_command(repo, wanted))
    return missing


def check_release_downloadable(release: OfficialRelease) -> None:
    """Fail at once, naming every missing file with one `hf download` command per repo, when
    the cache lacks files of `release` and nothing can be downloaded now (offline, no network)."""
    from starflow_core.sources.hub import (
        MissingModelFileError,
        download_instructions,
        hub_cache_dir,
        hub_unreachable_reason,
    )

    missing = missing_release_files(release)
    if not missing:
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return  # downloaded as they are needed
    listed = "\n".join(f"  {repo}: {', '.join(files)}" for repo, (files, _) in missing.items())
    raise MissingModelFileError(
        f"{release.name} needs files that are not in the Hugging Face cache {hub_cache_dir()}, and {reason}:\n"
        f"{listed}\n" + download_instructions([command for _, command in missing.values()])
    )


def resolve_release(release: OfficialRelease, dtype: str = "float32", strict: bool = False) -> PipelineParts:
    """Download what is missing (flow .pth, VAE, the T5 encoder's shards) and convert the flow
    once into `dtype`; tensors the model does not use are skipped with a warning unless `strict`.
    Offline, every missing file is named at once (check_release_downloadable)."""
    check_release_downloadable(release)
    flow = cached_official_flow(release, hub_file(release.flow_repo, release.flow_file), dtype, strict)
    vae = text = None
    if release.vae_repo:
        vae = hub_snapshot(release.vae_repo, release.vae_files, release.vae_files) / release.vae_folder
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
        source=release.name,
        video=release.video,
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
    if release.vae_repo and cached_file(release.vae_repo, release.vae_files[-1]) is None:
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
