"""The Wan2.2 VAE (STARFlow-V's video autoencoder): both twins against the official vectors and
against diffusers' AutoencoderKLWan (the oracle), the real model's parameters, chunked evaluation
through the causal cache, the official temporal scale, and the loaders' key checks.

Tolerance 1e-4 relative (max |error| / max |reference|), float32: the same arithmetic in another
order (MLX vs torch 3-D convolutions, fused attention) differs by float32 rounding, measured
around 1e-6 on these tiny models; 1e-4 leaves room for other BLAS builds without hiding a wrong
layer or a wrong cache (those give errors of order 1e-1).
"""

from __future__ import annotations

import json

import diffusers
import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.tiny_components import randomize_
from mlx.utils import tree_flatten
from safetensors.torch import load_file

from starflow_core.official.keys import CheckpointMismatchError
from starflow_core.official.wan_vae_keys import wan_vae_original_to_diffusers
from starflow_core.wan_vae_config import WanVAEConfig, resolve_wan_vae_config, split_temporal_scale
from starflow_mlx.wan_vae import AutoencoderKLWan, _torch_shape
from starflow_torch.checkpoint import build_empty
from starflow_torch.wan_vae import AutoencoderKLWan as TorchAutoencoderKLWan

FIXTURE = "tests/fixtures/wan22_vae_tiny"
TOLERANCE = 1e-4  # relative, see the module docstring
REAL_PARAMETERS = (
    704_688_668  # diffusers 0.42 AutoencoderKLWan at base_dim 160, decoder_base_dim 256, z_dim 48
)

# Tiny Wan2.2 layouts (is_residual, patch size 2): the released time schedule and another one.
TINY_LAYOUTS = {
    "wan22": dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2, 2], temperal_downsample=[False, True, True]),
    "early-time": dict(base_dim=8, decoder_base_dim=8, z_dim=6, dim_mult=[1, 2, 2, 2], temperal_downsample=[True, True, False]),
}  # fmt: skip


def relative_error(ours, reference) -> float:
    ours, reference = (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (ours, reference))
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def to_mlx(video_btchw: torch.Tensor) -> mx.array:
    """torch (B, T, C, H, W) -> MLX (B, T, H, W, C)."""
    return mx.array(video_btchw.permute(0, 1, 3, 4, 2).numpy())


def to_torch_layout(array: mx.array) -> np.ndarray:
    """MLX (B, T, H, W, C) -> numpy (B, T, C, H, W)."""
    return np.array(array).transpose(0, 1, 4, 2, 3)


def random_video(frames: int, height: int, width: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=generator) * 2 - 1  # (B, T, C, H, W)


# ----- (a) the official vectors ----------------------------------------------------------------
@pytest.fixture(scope="module")
def vectors():
    io = load_file(f"{FIXTURE}/io.safetensors")  # diffusers layout (B, C, T, H, W)
    return {name: tensor.transpose(1, 2).contiguous() for name, tensor in io.items()}  # (B, T, C, H, W)


def test_mlx_reproduces_the_official_vectors(vectors):
    vae = AutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json")
    z = vae.encode(to_mlx(vectors["video"]))
    assert relative_error(to_torch_layout(z), vectors["z"]) < TOLERANCE
    decoded = vae.decode(to_mlx(vectors["z"]))
    assert relative_error(to_torch_layout(decoded), vectors["decoded"]) < TOLERANCE


def test_torch_twin_reproduces_the_official_vectors(vectors):
    vae = TorchAutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json")
    with torch.no_grad():
        z = vae.encode(vectors["video"])
        decoded = vae.decode(vectors["z"])
    assert relative_error(z.numpy(), vectors["z"]) < TOLERANCE
    assert relative_error(decoded.numpy(), vectors["decoded"]) < TOLERANCE


# ----- (b) diffusers, random weights -------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(TINY_LAYOUTS))
def tiny_folder(request, tmp_path_factory):
    """A diffusers AutoencoderKLWan folder with random weights, norms and latent statistics."""
    layout = TINY_LAYOUTS[request.param]
    z_dim = layout["z_dim"]
    generator = torch.Generator().manual_seed(3)
    statistics = dict(
        latents_mean=(torch.randn(z_dim, generator=generator) * 0.3).tolist(),
        latents_std=(torch.rand(z_dim, generator=generator) + 0.5).tolist(),
    )
    torch.manual_seed(0)
    reference = diffusers.AutoencoderKLWan(
        **layout,
        num_res_blocks=1,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        **statistics,
    )
    randomize_(reference, seed=1, spread=0.05)
    folder = tmp_path_factory.mktemp(f"wan_vae_{request.param}")
    reference.save_pretrained(folder)
    return folder, reference.eval()


@pytest.mark.parametrize("frames", [5, 9])
def test_mlx_matches_diffusers_on_tiny_layouts(tiny_folder, frames):
    folder, reference = tiny_folder
    video = random_video(frames, 32, 48)  # 4k + 1 frames, not square
    config = reference.config
    shape = (1, 1, -1, 1, 1)
    with torch.no_grad():
        mean = reference.encode(video.transpose(1, 2)).latent_dist.mean.transpose(1, 2)  # (B, T', z, h, w)
        expected_z = (mean - torch.tensor(config.latents_mean).view(shape)) / torch.tensor(
            config.latents_std
        ).view(shape)
        raw = expected_z * torch.tensor(config.latents_std).view(shape) + torch.tensor(
            config.latents_mean
        ).view(shape)
        expected_video = reference.decode(raw.transpose(1, 2)).sample.transpose(1, 2)  # clamped to [-1, 1]

    vae = AutoencoderKLWan.from_pretrained(folder)
    z = vae.encode(to_mlx(video))
    assert z.shape == (1, 1 + (frames - 1) // 4, 2, 3, config.z_dim)
    assert relative_error(to_torch_layout(z), expected_z) < TOLERANCE
    decoded = to_torch_layout(vae.decode(mx.array(expected_z.permute(0, 1, 3, 4, 2).numpy())))
    assert decoded.shape == tuple(video.shape)
    # diffusers clamps the decoded video to [-1, 1] (the official does not; neither do we):
    # compare through the clamp, on outputs mostly inside it
    assert np.mean(np.abs(decoded) < 1) > 0.5
    assert relative_error(np.clip(decoded, -1, 1), expected_video) < TOLERANCE


def test_twins_agree_on_tiny_layouts(tiny_folder):
    folder, _ = tiny_folder
    video = random_video(9, 32, 48, seed=2, batch=2)
    ours = AutoencoderKLWan.from_pretrained(folder)
    theirs = TorchAutoencoderKLWan.from_pretrained(folder)
    z = ours.encode(to_mlx(video))
    with torch.no_grad():
        torch_z = theirs.encode(video)
        torch_video = theirs.decode(torch_z)
    assert relative_error(to_torch_layout(z), torch_z) < TOLERANCE
    assert relative_error(to_torch_layout(ours.decode(z)), torch_video) < TOLERANCE  # unclamped, both


# ----- (c) the real configuration, without allocating -------------------------------------------
def test_real_configuration_parameter_names_and_count():
    config = WanVAEConfig()  # Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/
    ours = dict(tree_flatten(AutoencoderKLWan(config).parameters()))  # lazy zeros: never evaluated
    reference = build_empty(lambda: diffusers.AutoencoderKLWan(**config.to_diffusers()))  # meta device
    theirs = {name: tuple(parameter.shape) for name, parameter in reference.named_parameters()}
    assert sum(int(np.prod(shape)) for shape in theirs.values()) == REAL_PARAMETERS
    assert sum(parameter.size for parameter in ours.values()) == REAL_PARAMETERS
    assert set(ours) == set(theirs)
    assert {name: _torch_shape(name, p.shape, config) for name, p in ours.items()} == theirs


# ----- (d) chunks of frames through the causal cache --------------------------------------------
def test_chunked_evaluation_equals_whole_video(tiny_folder):
    folder, _ = tiny_folder
    vae = AutoencoderKLWan.from_pretrained(folder)
    video = to_mlx(random_video(13, 32, 16, seed=4))  # 4 latent frames
    z_by_frame = vae.encode(video, chunk_frames=1)  # the official chunking
    z_whole = vae.encode(video, chunk_frames=3)  # the first frame, then the rest at once
    assert relative_error(np.array(z_whole), np.array(z_by_frame)) < 1e-5  # rounding only
    by_frame = vae.decode(z_by_frame, chunk_frames=1)
    whole = vae.decode(z_by_frame, chunk_frames=3)
    assert relative_error(np.array(whole), np.array(by_frame)) < 1e-5
    pieces = [piece.shape[1] for piece in vae.iter_decode(z_by_frame, chunk_frames=2)]
    assert pieces == [1, 8, 4]  # the first frame, then 4 frames per latent frame


def test_torch_twin_chunked_evaluation_equals_whole_video(tiny_folder):
    folder, _ = tiny_folder
    vae = TorchAutoencoderKLWan.from_pretrained(folder)
    video = random_video(13, 32, 16, seed=4)
    with torch.no_grad():
        z_by_frame, z_whole = vae.encode(video, chunk_frames=1), vae.encode(video, chunk_frames=3)
        by_frame, whole = vae.decode(z_by_frame, chunk_frames=1), vae.decode(z_by_frame, chunk_frames=3)
    assert relative_error(z_whole.numpy(), z_by_frame.numpy()) < 1e-5
    assert relative_error(whole.numpy(), by_frame.numpy()) < 1e-5


# ----- the official temporal scale -------------------------------------------------------------
def test_temporal_scale_is_applied_where_the_official_applies_it(tiny_folder):
    """utils/model_setup.py: encode multiplies latent frames 1: by the scale, decode divides first."""
    assert split_temporal_scale("Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6") == (
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        0.6,
    )
    assert split_temporal_scale("Wan-AI/Wan2.2-TI2V-5B-Diffusers") == ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 1.0)
    with pytest.raises(ValueError, match="positive number"):
        split_temporal_scale("Wan-AI/Wan2.2-TI2V-5B-Diffusers:fast")
    folder, _ = tiny_folder
    plain = AutoencoderKLWan.from_pretrained(folder)
    scaled = AutoencoderKLWan.from_pretrained(folder, temporal_scale=0.6)
    video = to_mlx(random_video(9, 32, 16, seed=5))
    z, z_scaled = np.array(plain.encode(video)), np.array(scaled.encode(video))
    np.testing.assert_array_equal(z_scaled[:, :1], z[:, :1])  # the first latent frame is not scaled
    np.testing.assert_allclose(z_scaled[:, 1:], 0.6 * z[:, 1:], rtol=1e-6)  # float32 rounding
    decoded = np.array(plain.decode(mx.array(z)))
    np.testing.assert_allclose(np.array(scaled.decode(mx.array(z_scaled))), decoded, rtol=0, atol=1e-5)
    torch_scaled = TorchAutoencoderKLWan.from_pretrained(folder, temporal_scale=0.6)
    with torch.no_grad():
        torch_z = torch_scaled.encode(random_video(9, 32, 16, seed=5))
    assert relative_error(torch_z.permute(0, 1, 3, 4, 2).numpy(), z_scaled) < TOLERANCE


# ----- loading: the key table and clear errors ---------------------------------------------------
def test_original_names_map_onto_diffusers_names():
    from starflow_core.official.pth_reader import list_pth_tensors

    original = list_pth_tensors(f"{FIXTURE}/official.pth")
    config = resolve_wan_vae_config(f"{FIXTURE}/config.json")
    expected = build_empty(lambda: diffusers.AutoencoderKLWan(**config.to_diffusers())).state_dict()
    renamed = {wan_vae_original_to_diffusers(name): tuple(info.shape) for name, info in original.items()}
    assert renamed == {name: tuple(tensor.shape) for name, tensor in expected.items()}
    assert wan_vae_original_to_diffusers("decoder.upsamples.1.upsamples.3.time_conv.weight") == (
        "decoder.up_blocks.1.upsampler.time_conv.weight"
    )
    assert wan_vae_original_to_diffusers("encoder.downsamples.0.downsamples.1.residual.6.bias") == (
        "encoder.down_blocks.0.resnets.1.conv2.bias"
    )


@pytest.mark.parametrize("twin", [AutoencoderKLWan, TorchAutoencoderKLWan])
def test_mismatched_official_weights_are_listed_by_name(twin, tmp_path):
    state = torch.load(f"{FIXTURE}/official.pth", weights_only=True)
    state["encoder.head.2.weight"] = state["encoder.head.2.weight"][:, :-1]  # mis-shaped
    del state["decoder.middle.1.proj.bias"]  # missing
    state["decoder.extra.weight"] = torch.zeros(1)  # unexpected
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        twin.from_official(tmp_path / "bad.pth", f"{FIXTURE}/config.json")
    message = str(error.value)
    assert "decoder.mid_block.attentions.0.proj.bias" in message  # missing, in our (diffusers) naming
    assert "decoder.extra.weight" in message
    assert "encoder.conv_out.weight" in message


def test_bad_videos_and_configs_are_refused_with_the_fix():
    vae = AutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json")
    with pytest.raises(ValueError, match=r"4k \+ 1 frames"):
        vae.encode(mx.zeros((1, 8, 32, 32, 3)))
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(mx.zeros((1, 5, 32, 40, 3)))
    with pytest.raises(ValueError, match="channels last"):
        vae.encode(mx.zeros((1, 5, 3, 32, 32)))
    with pytest.raises(ValueError, match="chunk_frames"):
        vae.decode(mx.zeros((1, 2, 2, 2, 8)), chunk_frames=0)
    with pytest.raises(ValueError, match="unknown Wan VAE constructor arguments"):
        WanVAEConfig.from_official({"constructor": {"dim": 16, "dimm_mult": [1, 2]}})
    with pytest.raises(ValueError, match="z_dim"):
        WanVAEConfig(z_dim=4)  # latents_mean still has Wan2.2's 48 entries


def test_large_convolutions_in_bands_give_the_same_numbers(vectors, monkeypatch):
    """Inputs above CONV_SCRATCH_BYTES go one output frame at a time in bands of rows."""
    from starflow_mlx import wan_vae_layers

    vae = AutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json")
    whole_z = np.array(vae.encode(to_mlx(vectors["video"])))
    whole_video = np.array(vae.decode(mx.array(whole_z)))
    monkeypatch.setattr(wan_vae_layers, "CONV_SCRATCH_BYTES", 200_000)  # a few rows per band
    banded_z = np.array(vae.encode(to_mlx(vectors["video"])))
    assert relative_error(banded_z, whole_z) < 1e-6  # the same dot products; float32 rounding at most
    assert relative_error(np.array(vae.decode(mx.array(whole_z))), whole_video) < 1e-6


def test_from_pretrained_finds_the_vae_folder_of_a_pipeline_repository(tiny_folder, tmp_path):
    folder, _ = tiny_folder
    (tmp_path / "vae").symlink_to(folder)
    video = to_mlx(random_video(5, 16, 16))
    np.testing.assert_array_equal(
        np.array(AutoencoderKLWan.from_pretrained(tmp_path).encode(video)),
        np.array(AutoencoderKLWan.from_pretrained(folder).encode(video)),
    )
    with pytest.raises(FileNotFoundError, match="config not found"):
        AutoencoderKLWan.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(("dtype", "tolerance"), [(mx.float16, 1e-2), (mx.bfloat16, 5e-2)])
def test_half_precision_weights_stay_close_to_float32(vectors, dtype, tolerance):
    """Norms and attention in float32, convolutions in the weights' dtype; the tolerance is the
    format's: float16 keeps 11 significant bits, bfloat16 8 (measured 1.3e-3 / 3.2e-3 and
    1.0e-2 / 2.4e-2 on encode / decode)."""
    vae = AutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json", dtype=dtype)
    z = vae.encode(to_mlx(vectors["video"]))
    decoded = vae.decode(to_mlx(vectors["z"]))
    assert z.dtype == decoded.dtype == mx.float32
    assert relative_error(to_torch_layout(z), vectors["z"]) < tolerance
    assert relative_error(to_torch_layout(decoded), vectors["decoded"]) < tolerance


def test_sampling_adds_the_posterior_std_as_the_official_does(tiny_folder):
    """The official encode: normalised mean + the posterior's std (not divided by latents_std) * N(0, 1)."""
    folder, reference = tiny_folder
    video = random_video(5, 32, 16, seed=6)
    with torch.no_grad():
        std = reference.encode(video.transpose(1, 2)).latent_dist.std.transpose(1, 2)  # (B, T', z, h, w)
    vae = AutoencoderKLWan.from_pretrained(folder)
    key = mx.random.key(7)
    mean = vae.encode(to_mlx(video))
    drawn = vae.encode(to_mlx(video), sample=True, key=key)
    noise = mx.random.normal(mean.shape, key=key)
    assert (
        relative_error(to_torch_layout((drawn - mean) / noise), std) < 1e-3
    )  # a ratio: float32 rounding of small differences
    torch_vae = TorchAutoencoderKLWan.from_pretrained(folder)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        torch_mean = torch_vae.encode(video)
        torch_drawn = torch_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(7))
    torch_noise = torch.randn(torch_mean.shape, generator=generator)
    assert relative_error((torch_drawn - torch_mean) / torch_noise, std) < 1e-3


def test_streamed_decoding_memory_does_not_grow_with_the_video():
    """Peak memory of iter_decode is a chunk's: the same for 2 and 4 latent frames (5 and 13
    frames), while decoding the frames after the first in one chunk grows with them."""
    vae = AutoencoderKLWan.from_official(f"{FIXTURE}/official.pth", f"{FIXTURE}/config.json")

    def peak_mb(run) -> float:
        mx.clear_cache()
        baseline = mx.get_active_memory()
        mx.reset_peak_memory()
        run()
        return (mx.get_peak_memory() - baseline) / 2**20

    short, long = mx.random.normal((1, 2, 2, 2, 8)), mx.random.normal((1, 4, 2, 2, 8))  # 32x32 frames
    mx.eval(short, long)
    streamed_short = peak_mb(lambda: [mx.eval(piece) for piece in vae.iter_decode(short)])
    streamed_long = peak_mb(lambda: [mx.eval(piece) for piece in vae.iter_decode(long)])
    one_chunk_long = peak_mb(lambda: mx.eval(vae.decode(long, chunk_frames=3)))
    assert streamed_long < streamed_short * 1.03 + 0.25  # measured 15.1 vs 15.3 MB: the same chunks
    assert one_chunk_long > 2 * streamed_long  # the measure sees a longer chunk (measured 42.9 MB)


def test_the_released_config_json_reads_as_the_default_config():
    """Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json's keys, clip_output included."""
    released = {
        "_class_name": "AutoencoderKLWan",
        "_diffusers_version": "0.35.0.dev0",
        "attn_scales": [],
        "base_dim": 160,
        "clip_output": False,
        "decoder_base_dim": 256,
        "dim_mult": [1, 2, 4, 4],
        "dropout": 0.0,
        "in_channels": 12,
        "is_residual": True,
        "latents_mean": list(WanVAEConfig().latents_mean),
        "latents_std": list(WanVAEConfig().latents_std),
        "num_res_blocks": 2,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_spatial": 16,
        "scale_factor_temporal": 4,
        "temperal_downsample": [False, True, True],
        "z_dim": 48,
    }
    assert WanVAEConfig.from_diffusers(released) == WanVAEConfig()
    assert WanVAEConfig().spatial_factor == 16 and WanVAEConfig().temporal_factor == 4


@pytest.mark.parametrize("twin", [AutoencoderKLWan, TorchAutoencoderKLWan])
def test_clip_output_clips_the_decoded_video(tiny_folder, tmp_path, twin):
    folder, _ = tiny_folder
    (tmp_path / "diffusion_pytorch_model.safetensors").symlink_to(
        folder / "diffusion_pytorch_model.safetensors"
    )
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "clip_output": True}))
    latents = torch.randn(1, 2, config["z_dim"], 2, 2, generator=torch.Generator().manual_seed(8)) * 3
    if twin is AutoencoderKLWan:
        plain = to_torch_layout(twin.from_pretrained(folder).decode(to_mlx(latents)))
        clipped = to_torch_layout(twin.from_pretrained(tmp_path).decode(to_mlx(latents)))
    else:
        with torch.no_grad():
            plain = twin.from_pretrained(folder).decode(latents).numpy()
            clipped = twin.from_pretrained(tmp_path).decode(latents).numpy()
    assert np.abs(plain).max() > 1  # the test sees a difference
    np.testing.assert_array_equal(clipped, np.clip(plain, -1, 1))
