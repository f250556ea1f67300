"""Which files and tensors of a transformers T5 checkpoint the text encoder needs (framework-free).

STARFlow uses only T5's encoder. A full T5 checkpoint (google/flan-t5-xl: two shards, 11.4 GB
in fp32) also holds the decoder and `lm_head`; the index (`model.safetensors.index.json`)
maps every tensor to its shard, so only the shards holding encoder tensors are downloaded and
read, and inside them only the encoder tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from starflow_core.validation import read_json_object

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
ENCODER_PREFIXES = ("shared.", "encoder.")
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # transformers ties it to shared.weight


def is_encoder_tensor(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def encoder_shards(index: Mapping) -> list[str]:
    """Shard file names (sorted) that the index maps at least one encoder tensor to."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"a T5 {WEIGHTS_INDEX_NAME} must hold a 'weight_map' object")
    return sorted({shard for name, shard in weight_map.items() if is_encoder_tensor(name)})


def encoder_weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of `folder` holding encoder tensors: model.safetensors, or the
    encoder's shards of a sharded checkpoint (decoder-only shards need not be there)."""
    folder = Path(folder)
    single, index_path = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if not index_path.is_file():
        raise FileNotFoundError(
            f"T5 weights not found in {folder}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (safetensors)"
        )
    paths = [folder / name for name in encoder_shards(read_json_object(index_path, "download it again"))]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"T5 weight shard {path} listed in {index_path} is missing")
    return paths


def encoder_tensor_names(names: Iterable[str]) -> dict[str, str]:
    """Encoder parameter name -> the file's tensor name, for the tensors of one checkpoint.

    Keeps `shared.*` and `encoder.*`; the decoder and `lm_head` are left out. The tied
    `encoder.embed_tokens.weight` stands in for `shared.weight` only when that is absent.
    """
    names = set(names)
    kept = {name: name for name in names if is_encoder_tensor(name) and name != TIED_EMBEDDING}
    if TIED_EMBEDDING in names and "shared.weight" not in names:
        kept["shared.weight"] = TIED_EMBEDDING
    return kept
