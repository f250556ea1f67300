"""Prompt -> T5 features for the PyTorch twin: transformers' T5 tokenizer and T5EncoderModel.

``TextEncoder.encode(prompts, max_length)`` returns the encoder's last hidden state times the
attention mask, (B, max_length, d_model) torch tensor, padding rows exactly zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from starflow_core.sources.t5_files import TIED_EMBEDDING, encoder_tensor_names, encoder_weight_files

from .checkpoint import build_empty, read_safetensors_mapped, stream_into


def load_t5_encoder(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> transformers.T5EncoderModel:
    """transformers' T5EncoderModel from a T5 folder, read tensor by tensor straight into `dtype`
    on `device`: only the shards holding encoder tensors are read (decoder-only shards need not
    be there), and the peak is the encoder in `dtype` plus one tensor. float16 overflows in T5."""
    folder = Path(folder)
    config = transformers.T5Config.from_pretrained(folder)
    model = build_empty(lambda: transformers.T5EncoderModel(config))
    files = {path: read_safetensors_mapped(path) for path in encoder_weight_files(folder)}
    sources: dict[str, tuple[Path, str]] = {}
    for path, tensors in files.items():
        for ours, theirs in encoder_tensor_names(tensors).items():
            sources.setdefault(ours, (path, theirs))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if name != TIED_EMBEDDING}
    found = {ours: tuple(files[path][theirs].shape) for ours, (path, theirs) in sources.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, got {v}" for k, v in found.items() if v != expected.get(k, v)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{folder}: T5 weights do not match config.json; missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {wrong}"
        )
    largest_first = sorted(sources.items(), key=lambda item: -files[item[1][0]][item[1][1]].nbytes)
    taken = ((ours, files[path].pop(theirs)) for ours, (path, theirs) in largest_first)
    stream_into(model, taken, dtype, device)
    return model.eval()


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
        return cls(tokenizer, load_t5_encoder(folder, dtype, device))

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
