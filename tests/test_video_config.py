"""STARFlow-V configurations: the released 7B YAML, constructor arguments, conversion, quantization.

The 7B (configs/starflow-v_7B_t2v_caus_480p.yaml, SPEC section 9) holds 558 tensors and
6,900,139,920 values in the official state_dict: our weights plus the official buffers that
carry no information (var, causal masks, zero RoPE tables). Both twins build it without
memory: MLX arrays stay lazy (never evaluated), torch uses the meta device.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_vectors, max_relative_error
from helpers.tiny_pipeline import TINY_LABEL_FLOW, make_flow_folder
from helpers.tiny_video import TINY_LABEL_VIDEO_FLOW

from starflow_core.config import FlowConfig
from starflow_core.official.arguments import (
    from_official_arguments,
    from_official_yaml,
    read_official_video_settings,
    resolve_config,
)
from starflow_core.official.convert import convert_official_checkpoint
from starflow_core.official.shapes import expected_weight_shapes, official_buffer_shapes
from starflow_core.presets import preset
from starflow_core.video.prompts import TemplateFlags

# The values of configs/starflow-v_7B_t2v_caus_480p.yaml (apple/ml-starflow).
STARFLOW_V_7B_YAML = """\
arguments:
- no_flip: 1
- fsdp: 1
- fsdp_text_encoder: 1
- img_size: 640
- secondary_img_size: 512
- txt_size: 256
- vid_size: '81:16'
- fps_cond: 1
- channel_size: 48
- patch_size: 1
- channels: 3072
- top_block_channels: 4096
- blocks: 6
- layers_per_block: 2 2 2 2 2 24
- noise_std: 0.5
- batch_size: 192
- secondary_batch_size: 1536
- secondary_ratio: 0.2
- lr: 5e-5
- min_lr: 1e-6
- nvp: 1
- rope: 1
- adaln: 0
- sos: 1
- seq_order: L2R
- pt_seq_len: 32
- wds: 1
- mix_aspect: 1
- use_softplus: 1
- cond_top_only: 1
- use_final_norm: 1
- learnable_self_denoiser: 1
- conditional_denoiser: 1
- denoiser_window: 10
- cond_noise_level: 1
- temporal_causal: 2
- shallow_block_local: 1
- gradient_checkpoint: 1
- gradient_checkpoint_mlp: 1
- vae: Wan-AI/Wan2.2-TI2V-5B-Diffusers:0.6
- finetuned_vae: none
- text: google/flan-t5-xl
- cfg: 2.5
- drop_label: 0.1
- drop_image: 0.25
- loss_scaling: 1
- grad_clip: 1
- grad_skip: 1
- sample_freq: 100000
- soft_clip: 4
"""
OFFICIAL_7B_TENSORS = 558
OFFICIAL_7B_VALUES = 6_900_139_920


@pytest.fixture(scope="module")
def config_7b(tmp_path_factory) -> FlowConfig:
    path = tmp_path_factory.mktemp("yaml") / "starflow-v_7B_t2v_caus_480p.yaml"
    path.write_text(STARFLOW_V_7B_YAML)
    return from_official_yaml(path)


def test_the_7b_yaml_gives_the_preset_and_the_official_key_set(config_7b):
    assert config_7b == preset("starflow-v-7b-t2v-480p")
    assert config_7b.img_size == 40 and config_7b.txt_dim == 2048  # 640 px / 16 (Wan2.2), T5-XL
    official = {**expected_weight_shapes(config_7b), **official_buffer_shapes(config_7b)}
    assert len(official) == OFFICIAL_7B_TENSORS
    assert sum(math.prod(shape) for shape in official.values()) == OFFICIAL_7B_VALUES
    assert official["blocks.5.attn_blocks.23.attention.qkv.weight"] == (3 * 4096, 4096)
    assert official["learnable_self_denoiser.attn_blocks.7.mlp.main.0.weight"] == (4 * 3072, 3072)


def test_noise_embed_denoiser_changes_nothing_and_says_so(tmp_path, config_7b):
    """The official Model takes noise_embed_denoiser into **unused_kwargs: no module reads it."""
    path = tmp_path / "noise_embed.yaml"
    path.write_text(STARFLOW_V_7B_YAML + "- noise_embed_denoiser: 1\n")
    with pytest.warns(UserWarning, match="noise_embed_denoiser=1 ignored: the official Model accepts"):
        assert from_official_yaml(path) == config_7b


def test_the_7b_video_settings_are_kept_for_the_pipeline(tmp_path):
    path = tmp_path / "video.yaml"
    path.write_text(STARFLOW_V_7B_YAML)
    settings = read_official_video_settings(path)
    assert (settings.num_frames, settings.fps) == (81, 16)
    assert settings.fps_cond and settings.cond_noise_level and settings.mix_aspect
    assert settings.vae == "Wan-AI/Wan2.2-TI2V-5B-Diffusers" and settings.temporal_scale == 0.6
    assert settings.template_flags() == TemplateFlags(fps_cond=True, cond_noise_level=True, mix_aspect=True)
    path.write_text(STARFLOW_V_7B_YAML.replace("- vid_size: '81:16'\n", ""))
    assert read_official_video_settings(path) is None  # an image YAML
    path.write_text(STARFLOW_V_7B_YAML.replace("'81:16'", "'81'"))
    with pytest.raises(ValueError, match="vid_size='81' must read 'frames:fps'"):
        read_official_video_settings(path)


def test_mlx_builds_the_7b_lazily_with_the_official_shapes(config_7b):
    """MLX arrays are lazy: building the 7B evaluates nothing (the weights alone are 27.6 GB)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from starflow_mlx import StarFlow

    model = StarFlow(config_7b)
    shapes = {name: tuple(value.shape) for name, value in tree_flatten(model.parameters())}
    assert shapes == expected_weight_shapes(config_7b)
    assert mx.get_active_memory() < 2**30


def test_torch_builds_the_7b_on_the_meta_device_with_the_official_shapes(config_7b):
    from starflow_torch import StarFlow

    with torch.device("meta"):
        model = StarFlow(config_7b)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    assert shapes == expected_weight_shapes(config_7b)


def test_constructor_arguments_of_the_video_options():
    config = resolve_config(FIXTURES / "starflow_video" / "config.json")
    assert (config.temporal_causal, config.shallow_block_local, config.top_block_channels) == (2, True, 96)
    assert (config.learnable_self_denoiser, config.conditional_denoiser, config.denoiser_window) == (
        True,
        True,
        10,
    )
    arguments = load_vectors("starflow_video")[0]["constructor"]
    # the denoiser's settings and noise_embed_denoiser change nothing without a denoiser / ever
    plain = from_official_arguments({**arguments, "learnable_self_denoiser": 0})
    assert plain.conditional_denoiser is False and plain.denoiser_window is None
    assert from_official_arguments({**arguments, "noise_embed_denoiser": 1}) == config
    assert from_official_arguments({**arguments, "local_attn_window": 4}).local_attn_window == 4


def test_video_options_are_validated_by_name():
    base = preset("tiny").replace(temporal_causal=2, shallow_block_local=True)
    cases = [
        (dict(temporal_causal=3), "temporal_causal=3: must be 0, 1 or 2"),
        (dict(seq_order="R2L"), "temporal_causal=2: needs seq_order='L2R'"),
        (dict(cond_top_only=False), "shallow_block_local=True: needs cond_top_only"),
        (
            dict(shallow_block_local=False, local_attn_window=4),
            "local_attn_window=4: needs shallow_block_local",
        ),
        (dict(local_attn_window=0), "local_attn_window=0: must be a positive number of frames"),
        (dict(conditional_denoiser=True), "conditional_denoiser=True: needs learnable_self_denoiser"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            base.replace(**changes)
    with pytest.raises(ValueError, match="video models place frames by a third RoPE coordinate"):
        base.replace(txt_size=0, txt_dim=0, cond_top_only=False, shallow_block_local=False).check_video(2)


def test_video_checkpoint_converts_without_torch_and_loads_in_mlx(tmp_path):
    """The video .pth streams into our folder like the image ones (deprecated buffers dropped);
    the MLX model loaded from it reproduces the vectors' z and denoiser (1e-4, SPEC section 7)."""
    import mlx.core as mx

    from starflow_mlx import StarFlow

    config = resolve_config(FIXTURES / "starflow_video" / "config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unexpected in the official file
        result = convert_official_checkpoint(
            FIXTURES / "starflow_video" / "official.pth", config, tmp_path / "flow"
        )
    assert sorted(result["dropped"]) == sorted(official_buffer_shapes(config))
    model = StarFlow.from_pretrained(tmp_path / "flow")
    io = load_vectors("starflow_video")[1]
    x, y = mx.array(io["x"].transpose(0, 1, 3, 4, 2)), mx.array(io["y"])
    z, _ = model(x, y)
    assert max_relative_error(np.asarray(z).transpose(0, 1, 4, 2, 3), io["z"]) < 1e-4
    denoised = np.asarray(model.learned_denoise(x, y)).transpose(0, 1, 4, 2, 3)
    assert max_relative_error(denoised, io["denoiser"]) < 1e-4


@pytest.mark.parametrize("bits", [8, 4])
def test_mlx_quantization_covers_the_deep_block_and_the_denoiser(tmp_path, bits):
    """Every transformer linear of the wide deep block and of the denoiser is quantized, and the
    quantized folder reloads. 8-bit keeps z within 1e-2 and the denoiser within 5e-2 of the
    full-precision model on the vectors (4-bit: 1e-1, 3e-1); measured 2e-3 / 1e-2 (4-bit 4e-2 / 2.2e-1)."""
    import mlx.core as mx
    import mlx.nn as nn

    from starflow_mlx import StarFlow

    case = FIXTURES / "starflow_video"
    model = StarFlow.from_official(case / "official.pth", case / "config.json")
    io = load_vectors("starflow_video")[1]
    x, y = mx.array(io["x"].transpose(0, 1, 3, 4, 2)), mx.array(io["y"])
    z_full, denoised_full = model(x, y)[0], model.learned_denoise(x, y)
    model.quantize(bits=bits, group_size=32)
    for layer in (model.blocks[2].attn_blocks[1], model.learnable_self_denoiser.attn_blocks[7]):
        for linear in (layer.attention.qkv, layer.attention.proj, layer.mlp.main[0], layer.mlp.main[2]):
            assert isinstance(linear, nn.QuantizedLinear) and linear.bits == bits
    model.save_pretrained(tmp_path / "q")
    reloaded = StarFlow.from_pretrained(tmp_path / "q")
    z_tol, denoiser_tol = (1e-2, 5e-2) if bits == 8 else (1e-1, 3e-1)
    assert max_relative_error(np.asarray(reloaded(x, y)[0]), np.asarray(z_full)) < z_tol
    assert (
        max_relative_error(np.asarray(reloaded.learned_denoise(x, y)), np.asarray(denoised_full))
        < denoiser_tol
    )


def test_convert_pipeline_gives_a_video_model_its_clip_length_and_rate(tmp_path):
    """`convert pipeline --num-frames --fps` writes model_index.json's "video" entry (the
    length `generate` makes by default); a model without one needs both; an image model none."""
    from starflow_core.sources.pipeline_folder import read_pipeline_folder
    from starflow_mlx.convert import main as convert

    make_flow_folder(tmp_path / "video_flow", TINY_LABEL_VIDEO_FLOW, seed=5)
    make_flow_folder(tmp_path / "image_flow", TINY_LABEL_FLOW, seed=5)
    base = ["pipeline", "--model", str(tmp_path / "video_flow"), "-o"]
    assert convert([*base, str(tmp_path / "a"), "--num-frames", "6"]) == 2  # no rate yet
    assert not (tmp_path / "a").exists()
    assert convert([*base, str(tmp_path / "b"), "--num-frames", "6", "--fps", "12"]) == 0
    assert read_pipeline_folder(tmp_path / "b").video.to_dict()["num_frames"] == 6
    # a pipeline that has both takes either alone
    assert convert(["pipeline", "--model", str(tmp_path / "b"), "-o", str(tmp_path / "c"), "--fps", "4"]) == 0
    video = read_pipeline_folder(tmp_path / "c").video
    assert (video.num_frames, video.fps) == (6, 4)
    image = ["pipeline", "--model", str(tmp_path / "image_flow"), "-o", str(tmp_path / "d")]
    assert convert([*image, "--num-frames", "6", "--fps", "12"]) == 2
    assert not (tmp_path / "d").exists()
