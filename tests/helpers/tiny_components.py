"""Tiny random SD-VAE and T5 folders in the upstream (diffusers / transformers) formats.

The reference implementations build and save them, so the folders are what
``from_pretrained`` meets on the Hub, only small. Used by the VAE, text and pipeline tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[8, 16],
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=16,
)

# stabilityai/sd-vae-ft-ema architecture (random weights).
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
    latent_channels=4,
    sample_size=256,
)

TINY_T5_CONFIG = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    tie_word_embeddings=False,
)

SENTENCEPIECE_VOCAB_SIZE = 160
EXTRA_IDS = 100

_CORPUS = """\
A photo of a cat sitting on a red sofa next to a window.
An astronaut riding a horse on the moon, digital art.
A bowl of fresh red apples on a wooden kitchen table.
Two dogs and one cat playing in the green grass of a park.
A city skyline at night with bright lights and tall buildings.
A watercolor painting of a mountain lake at sunrise.
The quick brown fox jumps over the lazy dog.
A close-up portrait of an old man with a white beard, 35mm film.
A small boat floating on a calm blue sea under a cloudy sky.
Café au lait, naïve façade, crème brûlée; 3.14 + 2 = 5.14!
"""


def randomize_(module: torch.nn.Module, seed: int = 0, spread: float = 0.1) -> None:
    """Give every parameter a random offset, so norms and biases are not the trivial 1 / 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(spread * torch.randn(parameter.shape, generator=generator))


def make_vae_folder(path: Path, config: dict, seed: int = 0):
    """Save a diffusers AutoencoderKL with random weights to ``path``; returns the torch model."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    randomize_(vae, seed)
    vae.save_pretrained(path, safe_serialization=True)
    return vae


def make_tiny_vae_folder(path: Path, seed: int = 0):
    return make_vae_folder(path, TINY_VAE_CONFIG, seed)


def official_finetuned_vae_state(diffusers_state: dict) -> dict:
    """Rename a diffusers AutoencoderKL state dict into the official STARFlow fine-tuned naming
    (encoder = Sequential(encoder, quant_conv), decoder = Sequential(post_quant_conv, decoder))."""
    prefixes = {
        "encoder.": "encoder.0.",
        "quant_conv.": "encoder.1.",
        "post_quant_conv.": "decoder.0.",
        "decoder.": "decoder.1.",
    }
    renamed = {}
    for key, value in diffusers_state.items():
        prefix = next(p for p in prefixes if key.startswith(p))
        renamed[prefixes[prefix] + key[len(prefix) :]] = value
    return renamed


def train_sentencepiece(path: Path, vocab_size: int = SENTENCEPIECE_VOCAB_SIZE) -> Path:
    """Train a small unigram sentencepiece model with T5's special ids; returns spiece.model."""
    import sentencepiece

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text(_CORPUS * 3, encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(path / "spiece"),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    corpus.unlink()
    (path / "spiece.vocab").unlink()
    return path / "spiece.model"


def make_tiny_t5_folder(path: Path, seed: int = 0, max_shard_size: str | None = None):
    """A transformers T5 folder: config.json, (sharded) model.safetensors, spiece.model and the
    transformers tokenizer files. Returns (T5EncoderModel, tokenizer)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = Path(path)
    import sentencepiece

    spiece_path = train_sentencepiece(path)
    piece_count = sentencepiece.SentencePieceProcessor(model_file=str(spiece_path)).get_piece_size()
    tokenizer = T5Tokenizer.from_pretrained(path, extra_ids=EXTRA_IDS)
    tokenizer.save_pretrained(path)
    config = T5Config(vocab_size=piece_count + EXTRA_IDS, **TINY_T5_CONFIG)
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    randomize_(model, seed)
    if max_shard_size is None:
        model.save_pretrained(path)
    else:
        model.save_pretrained(path, max_shard_size=max_shard_size)
    return model, tokenizer
