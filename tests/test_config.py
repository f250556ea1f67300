"""The framework-free FlowConfig: validation, presets, official arguments and YAML."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES

from starflow_core.config import FlowConfig
from starflow_core.official.arguments import from_official_arguments, from_official_yaml, resolve_config
from starflow_core.presets import preset

OFFICIAL_3B_YAML = """\
arguments:
- no_flip: 1
- fsdp: 1
- img_size: 256
- txt_size: 128
- channel_size: 4
- patch_size: 1
- channels: 3072
- blocks: 6
- layers_per_block: 2 2 2 2 2 24
- noise_std: 0.3
- nvp: 1
- rope: 1
- adaln: 0
- sos: 1
- seq_order: L2R
- use_softplus: 1
- cond_top_only: 1
- use_final_norm: 1
- vae: stabilityai/sd-vae-ft-ema
- text: google/flan-t5-xl
- cfg: 2.5
- soft_clip: 4
- latent_norm_regularization: 1e-4
"""


def test_official_yaml_gives_the_3b_preset(tmp_path):
    path = tmp_path / "starflow_3B_t2i_256x256.yaml"
    path.write_text(OFFICIAL_3B_YAML)
    config = from_official_yaml(path)
    assert config == preset("starflow-3b-t2i-256")
    assert config.img_size == 32 and config.txt_dim == 2048 and config.head_dim == 64  # defaults applied


def test_yaml_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(OFFICIAL_3B_YAML + "- chanels: 5\n")
    with pytest.raises(ValueError, match="unknown official arguments.*chanels"):
        from_official_yaml(path)


def test_round_trip_and_unknown_keys(tmp_path):
    config = preset("tiny")
    config.save(tmp_path / "config.json")
    assert FlowConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="unknown FlowConfig keys.*chanels"):
        FlowConfig.from_dict({**config.to_dict(), "chanels": 3})


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"img_size": 9, "patch_size": 2}, "img_size"),
        ({"layers_per_block": (1, 2)}, "layers_per_block"),
        ({"seq_order": "T2B"}, "seq_order"),
        ({"norm_type": "group_norm"}, "norm_type"),
        ({"txt_size": 0}, "txt_dim"),  # text features need text tokens (txt_dim=0 alone: no text)
        # RoPE: 2D needs head_dim % 4 == 0; with text 8 frequencies go to the text position
        ({"head_dim": 12, "channels": 48}, "head_dim"),
        ({"head_dim": 8, "channels": 64}, "head_dim"),
        ({"head_dim": 128}, "head_dim"),  # channels=64 < head_dim: no attention head
        ({"num_heads": 0}, "num_heads"),
        ({"num_kv_heads": 0}, "num_kv_heads"),
        ({"num_kv_heads": 3, "num_heads": 4, "head_dim": 16}, "num_kv_heads"),  # 3 does not divide 4
        ({"use_swiglu": 2}, "use_swiglu"),
        ({"pt_seq_len": -1}, "pt_seq_len"),
    ],
)
def test_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"FlowConfig.{field}"):
        preset("tiny").replace(**changes)


def test_head_sizes_the_official_code_runs_are_accepted():
    """The official code runs these; each used to be refused here."""
    tiny = preset("tiny")  # text, RoPE, channels 64
    # head_dim 16 with text: the row and column get no RoPE frequency, the 8 text ones fill the head
    assert tiny.replace(head_dim=16).query_heads == 4
    # channels not a multiple of head_dim: floor(100 / 32) = 3 heads of 32, proj reads 96
    assert tiny.replace(channels=100).query_heads == 3
    # explicit heads wider than channels (q width 128 > 64), grouped into 2 key/value heads
    assert tiny.replace(num_heads=4, num_kv_heads=2).kv_heads == 2


# Official constructor arguments of each architectural variant (official names and values).
VARIANTS = {
    "arch_vectors": None,  # tests/fixtures/starflow_arch/config.json
    "post_norm_gqa": dict(
        use_post_norm=1, num_heads=4, num_kv_heads=2, head_dim=16, hf_style_rope=1, pt_seq_len=6
    ),
    "swiglu_rms_no_bias": dict(use_swiglu=1, norm_type="rms_norm", use_bias=False, use_qk_norm=1),
    "no_prenorm": dict(norm_type="none", use_post_norm=1),
    "explicit_heads": dict(num_heads=3, channels=100, cond_top_only=0, seq_order="R2L"),
}


def _variant_arguments(name: str) -> dict:
    if VARIANTS[name] is None:
        return json.loads((FIXTURES / "starflow_arch" / "config.json").read_text())["constructor"]
    base = json.loads((FIXTURES / "starflow_tiny" / "config.json").read_text())["constructor"]
    return {**base, **VARIANTS[name]}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_official_arguments_round_trip_through_config_json(name, tmp_path):
    """official constructor arguments -> FlowConfig -> our config.json -> FlowConfig."""
    arguments = _variant_arguments(name)
    config = from_official_arguments(arguments)
    for key, value in arguments.items():  # our field names are the official ones
        got = getattr(config, key)
        assert got == (tuple(value) if isinstance(value, list) else value), key
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[k] for k in arguments if not isinstance(arguments[k], list)} == {
        k: v for k, v in arguments.items() if not isinstance(v, list)
    }
    assert FlowConfig.load(tmp_path / "config.json") == config
    assert resolve_config({"family": "starflow", "constructor": arguments}) == config


def test_official_constructor_arguments():
    config = resolve_config(FIXTURES / "starflow_tiny" / "config.json")
    assert config.layers_per_block == (1, 1, 2) and config.seq_order == "L2R"
    arguments = _variant_arguments("arch_vectors")
    ignored = dict(use_checkpoint=2, use_checkpoint_mlp=1, use_mm_attn=1, noise_embed_denoiser=1)
    assert from_official_arguments({**arguments, **ignored}) == from_official_arguments(arguments)
    same_width = from_official_arguments({**arguments, "top_block_channels": 64})
    assert same_width.channels == 64 and same_width.top_block_channels is None  # the same width
    with pytest.raises(ValueError, match=r"unknown official constructor arguments \['chanels'\]"):
        from_official_arguments({"chanels": 3})
    with pytest.raises(ValueError, match="expansion=2: the official STARFlow Model takes no expansion"):
        from_official_arguments({**arguments, "expansion": 2})
    with pytest.raises(ValueError, match="FlowConfig.family.*use_swiglu"):
        from_official_arguments({**arguments, "rope": 0, "sos": 0, "txt_size": 0, "txt_dim": 0,
                                 "cond_top_only": 0, "use_softplus": 0, "use_final_norm": 0,
                                 "seq_order": "R2L", "num_kv_heads": None}, family="tarflow")  # fmt: skip


def test_unimplemented_constructor_option_is_refused_by_name():
    with pytest.raises(ValueError, match="not implemented here: use_pretrained_lm='gemma3_1b' \\("):
        from_official_arguments({**_variant_arguments("arch_vectors"), "use_pretrained_lm": "gemma3_1b"})


# ----- official training YAMLs ---------------------------------------------------------------
VARIANT_YAML = (
    OFFICIAL_3B_YAML
    + """\
- use_swiglu: 1
- norm_type: rms_norm
- use_qk_norm: 1
- use_post_norm: 1
- num_heads: 32
- num_kv_heads: 8
- use_bias: 0
- pt_seq_len: 16
- grad_clip: 1
- grad_skip: 1
"""
)


def test_yaml_variant_flags_round_trip(tmp_path):
    path = tmp_path / "variant.yaml"
    path.write_text(VARIANT_YAML)
    config = from_official_yaml(path)
    assert config == preset("starflow-3b-t2i-256").replace(
        use_swiglu=True,
        norm_type="rms_norm",
        use_qk_norm=True,
        use_post_norm=True,
        num_heads=32,
        num_kv_heads=8,
        use_bias=False,
        pt_seq_len=16,
    )
    config.save(tmp_path / "config.json")
    assert FlowConfig.load(tmp_path / "config.json") == config


def test_yaml_block_count_follows_the_layer_list(tmp_path):
    """The official train.py builds len(layers_per_block) blocks when the list has several entries."""
    path = tmp_path / "blocks.yaml"
    path.write_text(OFFICIAL_3B_YAML.replace("- blocks: 6", "- blocks: 4"))
    assert from_official_yaml(path).num_blocks == 6
    path.write_text(OFFICIAL_3B_YAML.replace("- layers_per_block: 2 2 2 2 2 24", "- layers_per_block: 3"))
    assert from_official_yaml(path).layers_per_block == (3,) * 6


def test_unimplemented_yaml_option_is_refused_by_name(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(OFFICIAL_3B_YAML + "- use_pretrained_lm: gemma3_4b\n")
    with pytest.raises(
        ValueError, match="not implemented here: use_pretrained_lm=.*pretrained language model"
    ):
        from_official_yaml(path)
    path.write_text(OFFICIAL_3B_YAML + "- use_pretrained_lm: null\n")
    assert from_official_yaml(path) == preset("starflow-3b-t2i-256")  # at its default: accepted


@pytest.mark.parametrize("key, default, value", [("adaln", 0, 1), ("nvp", 1, 0)])
def test_flags_the_official_train_py_never_passes_are_noted(tmp_path, key, default, value):
    path = tmp_path / "noted.yaml"
    path.write_text(OFFICIAL_3B_YAML.replace(f"- {key}: {default}\n", f"- {key}: {value}\n"))
    with pytest.warns(UserWarning, match=f"{key}={value} ignored: the official train.py never passes"):
        config = from_official_yaml(path)
    assert config == preset("starflow-3b-t2i-256")
