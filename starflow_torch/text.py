"""Prompt -> T5 features for the PyTorch twin: transformers' T5 tokenizer and T5EncoderModel.

``TextEncoder.encode(prompts, max_length)`` returns the encoder's last hidden state times the
attention mask, (B, max_length, d_model) torch tensor, padding rows exactly zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


def _tokenizer_class() -> type:
    # transformers 5: T5Tokenizer is the tokenizers-backed class; 4.x: T5TokenizerFast is.
    return getattr(transformers, "T5TokenizerFast", transformers.T5Tokenizer)


class TextEncoder:
    """Tokenizer + T5 encoder from one Hugging Face T5 folder. Call ``unload()`` to free the
    T5 weights once the prompts are encoded."""

    def __init__(self, tokenizer, model: transformers.T5EncoderModel):
        self.tokenizer = tokenizer
        self.model: transformers.T5EncoderModel | None = model

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> TextEncoder:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"T5 config not found: {folder / 'config.json'}")
        tokenizer = _tokenizer_class().from_pretrained(folder)
        model = transformers.T5EncoderModel.from_pretrained(folder, dtype=dtype).to(device).eval()
        return cls(tokenizer, model)

    @property
    def d_model(self) -> int:
        return self._loaded_model().config.d_model

    def _loaded_model(self) -> transformers.T5EncoderModel:
        if self.model is None:
            raise RuntimeError(
                "TextEncoder weights were freed by unload(); load it again with from_pretrained"
            )
        return self.model

    @torch.no_grad()
    def encode(self, prompts: str | list[str], max_length: int) -> torch.Tensor:
        """prompts -> (B, max_length, d_model) = last_hidden_state * attention_mask."""
        model = self._loaded_model()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        ).to(model.device)
        hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask[:, :, None].to(hidden.dtype)

    def unload(self) -> None:
        """Drop the T5 weights (the tokenizer stays); ``encode`` raises afterwards."""
        self.model = None
