"""The STARFlow-V 7B release: its files, offline refusal naming every missing file, the memory
check before any download, and the peak-memory formula against measurement at reduced shapes."""

from __future__ import annotations

import pytest

from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import flow_weight_bytes
from starflow_core.generation.video_memory import estimate_video_memory, make_video_shape
from starflow_core.presets import preset
from starflow_core.sources import hub
from starflow_core.sources.hub import MissingModelFileError
from starflow_core.sources.releases import release_by_name
from starflow_core.sources.resolve import resolve

SEVEN_B = "starflow-v-7b-t2v-480p"


def test_the_release_names_the_official_files_and_settings():
    release = release_by_name(SEVEN_B)
    assert release.flow_repo == "apple/starflow"
    assert release.flow_file == "starflow-v_7B_t2v_caus_480p_v3.pth"  # the official README's name
    assert release.vae_repo == "Wan-AI/Wan2.2-TI2V-5B-Diffusers" and release.vae_folder == "vae"
    assert release.text_repo == "google/flan-t5-xl"
    video = release.video  # configs/starflow-v_7B_t2v_caus_480p.yaml
    assert (video.num_frames, video.fps, video.temporal_scale) == (81, 16, 0.6)
    assert video.fps_cond and video.cond_noise_level and video.mix_aspect
    settings = release.sampling  # scripts/test_sample_video.sh
    assert (settings.guidance, settings.jacobi, settings.block_size, settings.tol) == (3.5, True, 32, 1e-3)
    assert release.config == preset(SEVEN_B)


def test_offline_the_release_fails_at_once_naming_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(MissingModelFileError) as info:
        resolve(SEVEN_B)
    message = str(info.value)
    commands = [line.strip() for line in message.splitlines() if line.strip().startswith("hf download")]
    assert commands == [
        "hf download apple/starflow starflow-v_7B_t2v_caus_480p_v3.pth",
        "hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json vae/diffusion_pytorch_model.safetensors",
        "hf download google/flan-t5-xl config.json spiece.model model.safetensors.index.json",
    ]
    assert "HF_HUB_OFFLINE is set" in message
    listed = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in message.splitlines()[1:4]}
    assert listed == {
        "apple/starflow": "starflow-v_7B_t2v_caus_480p_v3.pth",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "vae/config.json, vae/diffusion_pytorch_model.safetensors",
        "google/flan-t5-xl": "config.json, spiece.model, the encoder weight shards that "
        "model.safetensors.index.json lists (a run after this download names them)",
    }
    assert hub.hub_offline()


def test_flow_bytes_by_dtype_and_quantization():
    config = preset(SEVEN_B)
    # exact from the shapes; quantized layers keep their scales and biases, proj_in / proj_out /
    # proj_txt stay bf16 (so 8-bit is 7.3 GB, not half of 13.8)
    assert flow_weight_bytes(config, "bfloat16") == pytest.approx(13.8e9, rel=0.01)
    assert flow_weight_bytes(config, "bfloat16", 8) == pytest.approx(7.34e9, rel=0.01)
    assert flow_weight_bytes(config, "bfloat16", 4) == pytest.approx(3.90e9, rel=0.01)


def test_the_kv_cache_grows_with_frames_tokens_and_guidance():
    config = preset(SEVEN_B)
    precision = Precision("bfloat16", 8)
    short = estimate_video_memory(
        config, precision, make_video_shape(config, 17, 352, 640, 81, jacobi_block_size=None)
    )
    long = estimate_video_memory(
        config, precision, make_video_shape(config, 33, 352, 640, 81, jacobi_block_size=None)
    )
    free = estimate_video_memory(
        config, precision, make_video_shape(config, 33, 352, 640, 81, guided=False, jacobi_block_size=None)
    )
    # 2 x (24 + 1) layers x rows x positions x 4096 x 2 bytes; 880 tokens per 352x640 latent frame
    per_frame = 2 * 25 * 2 * 880 * 4096 * 2
    assert long.phases["sample"] - short.phases["sample"] == pytest.approx(4 * per_frame, rel=0.02)
    assert long.phases["sample"] - free.phases["sample"] == pytest.approx(
        (9 * 880 + 256) * 2 * 25 * 4096 * 2, rel=0.05
    )


@pytest.mark.parametrize(
    "gigabytes, advice",
    [
        # 480x848: the peak is sampling's KV cache (the denoiser's attention runs in chunks)
        (32, "--num-frames 49 --quantize 8 needs about 28.8 GB"),
        (16, "no length at this size fits; try a smaller --height/--width"),
    ],
)
def test_the_memory_check_refuses_before_any_download(tmp_path, monkeypatch, gigabytes, advice):
    from starflow_core.generation import cli

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(tmp_path)

    def nothing(*args, **kwargs):
        raise AssertionError("the check ran after resolving")

    monkeypatch.setattr(cli, "resolve", nothing)
    parser = cli.build_parser("starflow_mlx.generate", "test")
    backend = cli.Backend(
        load=nothing,
        load_video=nothing,
        peak_memory=lambda: None,
        precision=lambda args: Precision("bfloat16", args.quantize),
        memory=lambda args: (gigabytes * 10**9, f"{gigabytes} GB"),
        quantization=True,
    )
    args = parser.parse_args(["a fox", "--model", SEVEN_B, "--num-frames", "81", "--aspect-ratio", "16:9"])
    with pytest.raises(ValueError, match=r"needs about .* GB at its peak .* this machine has") as info:
        cli.run(args, backend)
    # nothing at 81 frames fits, so the message names the longest shorter video that does, if any
    assert advice in str(info.value)
    assert not (tmp_path / "empty_cache").exists()


def test_the_estimate_is_within_a_quarter_of_the_measured_peak_at_reduced_shapes():
    """A scaled-down 7B (benchmarks/video_memory.py): sampling (KV cache + step) and the learned
    denoiser, MLX CPU float32. The margin: allocator rounding and small arrays the formula omits
    (the sample estimate ran 0.76-0.88 of the measured before one layer's copy was counted; the
    benchmark's other shapes, sequential and 11 frames at 12x12, are within the same margin)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "video_memory_benchmark", Path(__file__).parents[1] / "benchmarks" / "video_memory.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    for phase, (measured, estimated) in benchmark.measure(benchmark.REDUCED, 6, 8, True).items():
        assert 0.75 < estimated / measured < 1.25, (phase, measured, estimated)
    # the denoiser's attention in chunks of query rows (5 rows of scores at a time, as the 7B's 83)
    chunked = benchmark.measure(benchmark.REDUCED, 6, 8, True, score_bytes=benchmark.CHUNKED_SCORE_BYTES)
    measured, estimated = chunked["denoise"]
    assert 0.75 < estimated / measured < 1.25, ("chunked denoise", measured, estimated)


def test_the_denoiser_is_not_the_7b_memory_wall():
    """81 frames of 480x848 (21 latent frames x 1,590 tokens + 256 text = 33,646 positions, 48
    heads): the whole attention's scores would be 48 x 33,646^2 x 2 bytes = 109 GB a layer; in
    chunks of 83 query rows (512 MiB of float32 scores) the denoiser's phase is the flow's weights,
    the 1.1 GB mask, one chunk and the MLP's activations, below sampling's KV cache."""
    from starflow_core.generation.video_memory import video_denoise_bytes

    config = preset(SEVEN_B)
    shape = make_video_shape(config, 81, 480, 848, 81)
    estimate = estimate_video_memory(config, Precision("bfloat16"), shape)
    assert estimate.phases["denoise"] < estimate.phases["sample"] == estimate.peak
    positions = 21 * 1590 + 256
    chunk = 5 * 83 * 48 * positions * 2 // 4  # a quarter more than one chunk's bf16 scores
    hidden = 10 * positions * 12288 * 3  # half bf16, half float32
    assert video_denoise_bytes(config, shape, "bfloat16") == positions**2 + chunk + hidden
