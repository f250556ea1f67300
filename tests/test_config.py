"""The framework-free FlowConfig: validation, presets, official arguments and YAML."""

from __future__ import annotations

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


def test_yaml_unknown_and_unsupported_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(OFFICIAL_3B_YAML + "- chanels: 5\n")
    with pytest.raises(ValueError, match="chanels"):
        from_official_yaml(path)
    path.write_text(OFFICIAL_3B_YAML.replace("adaln: 0", "adaln: 1"))
    with pytest.raises(ValueError, match="adaln"):
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
        ({"channels": 100}, "channels"),
        ({"img_size": 9, "patch_size": 2}, "img_size"),
        ({"layers_per_block": (1, 2)}, "layers_per_block"),
        ({"seq_order": "T2B"}, "seq_order"),
        ({"norm_type": "rms_norm"}, "norm_type"),
        ({"txt_dim": 0}, "txt_dim"),
        ({"head_dim": 16, "channels": 64}, "head_dim"),
    ],
)
def test_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"FlowConfig.{field}"):
        preset("tiny").replace(**changes)


def test_official_constructor_arguments():
    config = resolve_config(FIXTURES / "starflow_tiny" / "config.json")
    assert config.layers_per_block == (1, 1, 2) and config.seq_order == "L2R"
    with pytest.raises(ValueError, match="use_swiglu"):
        from_official_arguments(
            {
                "in_channels": 4,
                "img_size": 8,
                "patch_size": 1,
                "channels": 64,
                "num_blocks": 2,
                "layers_per_block": [1],
                "use_swiglu": True,
            }
        )
    with pytest.raises(ValueError, match="unknown official constructor argument 'chanels'"):
        from_official_arguments({"chanels": 3})
