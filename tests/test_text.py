"""MLX T5 encoder, tokenizer and TextEncoder against transformers (the oracle), and the torch twin.

Token ids must be equal. Hidden states: tolerance 1e-4 in float32, the rounding of the
same sums in another order (measured around 2e-6 on the tiny model); a wrong layer,
missing scale or bucket error gives errors of order 1e-1 and more.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.tiny_components import TINY_T5_CONFIG, make_tiny_t5_folder, randomize_
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from starflow_mlx.t5 import T5Encoder, relative_position_buckets
from starflow_mlx.text import T5Tokenizer, TextEncoder
from starflow_torch.text import TextEncoder as TorchTextEncoder

FP32_TOLERANCE = 1e-4
MAX_LENGTH = 16

PROMPTS = [
    "A photo of a cat sitting on a red sofa.",
    "",  # the null prompt used for guidance
    "a very long prompt about apples and dogs and the moon " * 6,  # truncated at MAX_LENGTH
    "Café au lait, naïve façade: 日本語 ünïcödé 🙂 ½ ＡＢＣ",  # NFKC, unknown characters
    "   \t \n ",  # whitespace only
    "  leading  and   trailing   spaces  ",
    "tabs\tand\nnewlines",
    "special tokens</s> inside <extra_id_0> a<pad>b <unk> <extra_id_10>",
]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_t5")
    model, tokenizer = make_tiny_t5_folder(folder)
    return folder, model, tokenizer


def reference_features(model, tokenizer, prompts, max_length=MAX_LENGTH) -> np.ndarray:
    tokens = tokenizer(
        prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return (hidden * tokens.attention_mask[:, :, None]).numpy()


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 32), (16, 64), (64, 256)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
    positions = torch.arange(600)
    expected = T5Attention._relative_position_bucket(
        positions[None, :] - positions[:, None],
        bidirectional=True,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    assert np.array_equal(relative_position_buckets(600, num_buckets, max_distance), expected.numpy())


@pytest.mark.parametrize("max_length", [1, 3, MAX_LENGTH, 64])
def test_token_ids_match_transformers(tiny_t5, max_length):
    folder, _, reference_tokenizer = tiny_t5
    input_ids, attention_mask = T5Tokenizer(folder / "spiece.model")(PROMPTS, max_length)
    expected = reference_tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=max_length)
    assert input_ids.tolist() == expected["input_ids"]
    assert attention_mask.tolist() == expected["attention_mask"]
    assert input_ids[PROMPTS.index(""), 0] == 1  # the null prompt is </s> then padding
    if max_length == 64:
        assert (input_ids[3] == 2).any()  # the unicode prompt: characters unknown to the vocabulary


def test_truncation_keeps_eos_last(tiny_t5):
    folder, _, _ = tiny_t5
    input_ids, attention_mask = T5Tokenizer(folder / "spiece.model")([PROMPTS[2]], MAX_LENGTH)
    assert attention_mask.all() and input_ids[0, -1] == 1 and (input_ids[0, :-1] != 1).all()


def test_hidden_states_match_transformers(tiny_t5):
    folder, model, tokenizer = tiny_t5
    features = TextEncoder.from_pretrained(folder).encode(PROMPTS, MAX_LENGTH)
    assert features.shape == (len(PROMPTS), MAX_LENGTH, TINY_T5_CONFIG["d_model"])
    assert np.abs(np.array(features) - reference_features(model, tokenizer, PROMPTS)).max() < FP32_TOLERANCE


def test_sharded_checkpoint_loads(tmp_path):
    model, tokenizer = make_tiny_t5_folder(tmp_path, seed=1, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (
        tmp_path / "model.safetensors"
    ).exists()
    assert (
        len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values()))
        > 1
    )
    features = TextEncoder.from_pretrained(tmp_path).encode(PROMPTS, MAX_LENGTH)
    assert np.abs(np.array(features) - reference_features(model, tokenizer, PROMPTS)).max() < FP32_TOLERANCE


def test_padding_rows_are_exactly_zero(tiny_t5):
    folder, _, _ = tiny_t5
    text = TextEncoder.from_pretrained(folder)
    features = np.array(text.encode(PROMPTS, MAX_LENGTH))
    _, attention_mask = text.tokenizer(PROMPTS, MAX_LENGTH)
    assert (features[attention_mask == 0] == 0).all()
    assert (np.abs(features[attention_mask == 1]).sum(axis=-1) > 0).all()
    null = np.array(text.encode("", MAX_LENGTH))  # the null prompt: </s> then padding
    assert (null[0, 1:] == 0).all() and np.abs(null[0, 0]).sum() > 0


def test_mlx_matches_torch_twin(tiny_t5):
    folder, _, _ = tiny_t5
    twin = TorchTextEncoder.from_pretrained(folder)
    expected = twin.encode(PROMPTS, MAX_LENGTH).numpy()
    assert np.abs(
        np.array(TextEncoder.from_pretrained(folder).encode(PROMPTS, MAX_LENGTH)) - expected
    ).max() < (FP32_TOLERANCE)
    _, attention_mask = T5Tokenizer(folder / "spiece.model")(PROMPTS, MAX_LENGTH)
    assert (expected[attention_mask == 0] == 0).all()


def test_twins_have_the_same_parameter_names(tiny_t5):
    from mlx.utils import tree_flatten

    folder, model, _ = tiny_t5
    mlx_names = {name for name, _ in tree_flatten(T5Encoder.from_pretrained(folder).parameters())}
    torch_names = set(model.state_dict()) - {"encoder.embed_tokens.weight"}  # tied to shared.weight
    assert mlx_names == torch_names


def test_full_t5_checkpoint_decoder_is_ignored(tiny_t5, tmp_path):
    folder, _, tokenizer = tiny_t5
    config = HFT5Config.from_pretrained(folder)
    torch.manual_seed(0)
    full = T5ForConditionalGeneration(config).eval()
    randomize_(full, seed=5)
    full.save_pretrained(tmp_path)
    shutil.copy(folder / "spiece.model", tmp_path / "spiece.model")
    features = TextEncoder.from_pretrained(tmp_path).encode(PROMPTS, MAX_LENGTH)
    expected = reference_features(full.get_encoder(), tokenizer, PROMPTS)
    assert np.abs(np.array(features) - expected).max() < FP32_TOLERANCE
    twin_features = TorchTextEncoder.from_pretrained(tmp_path).encode(PROMPTS, MAX_LENGTH).numpy()
    assert np.abs(twin_features - expected).max() < FP32_TOLERANCE


def test_original_t5_relu_feed_forward(tiny_t5, tmp_path):
    folder, _, tokenizer = tiny_t5
    config = HFT5Config.from_pretrained(folder)
    config.feed_forward_proj = "relu"
    config.dense_act_fn, config.is_gated_act = "relu", False
    torch.manual_seed(0)
    model = T5EncoderModel(config).eval()
    randomize_(model, seed=6)
    model.save_pretrained(tmp_path)
    shutil.copy(folder / "spiece.model", tmp_path / "spiece.model")
    features = TextEncoder.from_pretrained(tmp_path).encode(PROMPTS, MAX_LENGTH)
    assert np.abs(np.array(features) - reference_features(model, tokenizer, PROMPTS)).max() < FP32_TOLERANCE


def test_bfloat16_is_close(tiny_t5):
    folder, model, tokenizer = tiny_t5
    features = TextEncoder.from_pretrained(folder, dtype=mx.bfloat16).encode(PROMPTS, MAX_LENGTH)
    assert features.dtype == mx.bfloat16
    # 8-bit mantissa through 2 layers: about 1e-2 relative to the feature scale.
    expected = reference_features(model, tokenizer, PROMPTS)
    assert np.abs(np.array(features.astype(mx.float32)) - expected).max() < 0.05 * np.abs(expected).max()


def test_unload_frees_the_weights(tiny_t5):
    folder, _, _ = tiny_t5
    for text in (TextEncoder.from_pretrained(folder), TorchTextEncoder.from_pretrained(folder)):
        text.encode("a cat", MAX_LENGTH)
        text.unload()
        assert text.model is None
        with pytest.raises(RuntimeError, match="unload"):
            text.encode("a cat", MAX_LENGTH)


def test_missing_files_name_the_file(tiny_t5, tmp_path):
    folder, _, _ = tiny_t5
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder.from_pretrained(tmp_path)
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        TextEncoder.from_pretrained(tmp_path)
    shutil.copy(folder / "spiece.model", tmp_path / "spiece.model")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TextEncoder.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tiny_t5, tmp_path):
    folder, _, _ = tiny_t5
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['encoder\.block\.2\."):
        T5Encoder.from_pretrained(tmp_path)


def test_bad_arguments(tiny_t5):
    folder, _, _ = tiny_t5
    tokenizer = T5Tokenizer(folder / "spiece.model")
    with pytest.raises(ValueError, match="max_length"):
        tokenizer(["a cat"], 0)
    with pytest.raises(TypeError, match="index 1"):
        tokenizer(["a cat", None], 8)
