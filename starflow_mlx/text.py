"""Prompt -> T5 features for STARFlow: a sentencepiece T5 tokenizer and the MLX T5 encoder.

``TextEncoder.encode(prompts, max_length)`` returns the encoder's last hidden state times the
attention mask, (B, max_length, d_model), padding rows exactly zero (SPEC section 5). The
null prompt "" for guidance goes through the same path (it becomes ``</s>`` + padding).
"""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import sentencepiece

from .t5 import CONFIG_NAME, T5Encoder

SPIECE_NAME = "spiece.model"


class T5Tokenizer:
    """sentencepiece with transformers' T5 semantics.

    - ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 (the sentencepiece model's own ids, checked),
      then the sentencepiece vocabulary, then ``extra_ids`` sentinels ``<extra_id_0>`` (the
      highest id) down to ``<extra_id_{n-1}>``;
    - special-token strings written in a prompt (``</s>``, ``<extra_id_3>``...) become their id,
      the text around them is encoded piece by piece, as transformers does;
    - ``</s>`` is appended; sequences longer than ``max_length`` are cut to ``max_length - 1``
      ids before ``</s>``, so ``</s>`` is always kept; padding with ``<pad>`` on the right.
    """

    pad_id = 0
    eos_id = 1
    unk_id = 2

    def __init__(self, spiece_path: str | Path, extra_ids: int = 100):
        spiece_path = Path(spiece_path)
        if not spiece_path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {spiece_path}")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_path))
        ids = (self.processor.pad_id(), self.processor.eos_id(), self.processor.unk_id())
        if ids != (self.pad_id, self.eos_id, self.unk_id):
            raise ValueError(
                f"{spiece_path}: expected T5 ids pad=0, eos=1, unk=2, "
                f"got pad={ids[0]}, eos={ids[1]}, unk={ids[2]}"
            )
        self.extra_ids = extra_ids
        sentencepiece_size = self.processor.get_piece_size()
        self.special_ids = {"<pad>": self.pad_id, "</s>": self.eos_id, "<unk>": self.unk_id}
        for i in range(extra_ids):
            self.special_ids[f"<extra_id_{i}>"] = sentencepiece_size + extra_ids - 1 - i
        # Longest first so "<extra_id_10>" is not read as "<extra_id_1>" + "0>".
        names = sorted(self.special_ids, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(re.escape(name) for name in names) + ")")

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size() + self.extra_ids

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt, without ``</s>``."""
        ids: list[int] = []
        for index, segment in enumerate(self._special_pattern.split(prompt)):
            if index % 2:  # odd segments are the special-token matches
                ids.append(self.special_ids[segment])
            elif segment:
                ids.extend(self.processor.encode(segment))
        return ids

    def __call__(self, prompts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """-> input_ids (B, max_length) int32 and attention_mask (B, max_length) int32."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        input_ids = np.full((len(prompts), max_length), self.pad_id, dtype=np.int32)
        attention_mask = np.zeros((len(prompts), max_length), dtype=np.int32)
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be strings, got {type(prompt).__name__} at index {row}")
            ids = self.tokenize(prompt)[: max_length - 1] + [self.eos_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


class TextEncoder:
    """Tokenizer + T5 encoder from one Hugging Face T5 folder (``spiece.model`` and weights).

    MLX arrays; features are (B, max_length, d_model). Call ``unload()`` to free the T5
    weights once the prompts are encoded (the pipeline does so before sampling).
    """

    def __init__(self, tokenizer: T5Tokenizer, model: T5Encoder):
        self.tokenizer = tokenizer
        self.model: T5Encoder | None = model

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: mx.Dtype = mx.float32, quantize: int | None = None
    ) -> TextEncoder:
        """`quantize`: 8 (or 4) bit T5 weights, quantized as they load (see T5Encoder)."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"T5 config not found: {folder / CONFIG_NAME}")
        tokenizer = T5Tokenizer(folder / SPIECE_NAME)
        return cls(tokenizer, T5Encoder.from_pretrained(folder, dtype=dtype, quantize=quantize))

    @property
    def d_model(self) -> int:
        return self._loaded_model().config.d_model

    def _loaded_model(self) -> T5Encoder:
        if self.model is None:
            raise RuntimeError(
                "TextEncoder weights were freed by unload(); load it again with from_pretrained"
            )
        return self.model

    def encode(self, prompts: str | list[str], max_length: int) -> mx.array:
        """prompts -> (B, max_length, d_model) = last_hidden_state * attention_mask."""
        model = self._loaded_model()
        if isinstance(prompts, str):
            prompts = [prompts]
        input_ids, attention_mask = self.tokenizer(list(prompts), max_length)
        mask = mx.array(attention_mask)
        hidden = model(mx.array(input_ids), mask)  # (B, L, d_model)
        features = hidden * mask[:, :, None].astype(hidden.dtype)
        mx.eval(features)
        return features

    def unload(self) -> None:
        """Drop the T5 weights (the tokenizer stays); ``encode`` raises afterwards."""
        self.model = None
