"""Model sources against a fake Hugging Face cache laid out as huggingface_hub lays it out.

The official release "starflow-3b-t2i-256" resolves through its real repo and file names
(apple/starflow / starflow_3B_t2i_256x256.pth, stabilityai/sd-vae-ft-ema, google/flan-t5-xl);
a tiny checkpoint with the official key names (deprecated buffers included) stands in for
the 3B one through the `flow_config` override. Nothing touches the network.
"""

from __future__ import annotations

import huggingface_hub
import mlx.core as mx
import numpy as np
import pytest
import torch

import starflow_core.sources.hub as hub
import starflow_core.sources.releases as releases
import starflow_mlx.pipeline as mlx_pipeline
from starflow_core.sources.hub import MissingModelFileError
from starflow_core.sources.resolve import resolve
from tests.helpers.tiny_components import make_tiny_t5_folder, make_tiny_vae_folder
from tests.helpers.tiny_pipeline import TINY_TEXT_FLOW, add_to_fake_hub, make_tiny_pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def official_checkpoint(path):
    """A tiny STARFlow state_dict as the official code saves it (with its dead buffers)."""
    from starflow_torch import StarFlow

    torch.manual_seed(0)
    state = StarFlow(TINY_TEXT_FLOW).state_dict()
    state["var"] = torch.ones(64, 4)
    state["blocks.0.attn_mask"] = torch.ones(64, 64, dtype=torch.bool)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_sources")
    make_tiny_t5_folder(root / "t5")
    make_tiny_vae_folder(root / "vae")
    return {
        "pth": official_checkpoint(root / "official.pth"),
        "t5": root / "t5",
        "vae": root / "vae",
        "pipeline": make_tiny_pipeline(root / "ours"),
    }


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, sources):
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))
    add_to_fake_hub(cache, "apple/starflow", {"starflow_3B_t2i_256x256.pth": sources["pth"]}, COMMIT)
    vae_files = {name: sources["vae"] / name for name in hub.VAE_PATTERNS}
    add_to_fake_hub(cache, "stabilityai/sd-vae-ft-ema", vae_files, COMMIT)
    t5_files = {p.name: p for p in sources["t5"].iterdir() if p.is_file()}
    add_to_fake_hub(cache, "google/flan-t5-xl", t5_files, COMMIT)
    return cache


def test_release_resolves_converts_once_and_generates(fake_hub, tmp_path, monkeypatch):
    parts = resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW)
    assert parts.transformer.is_relative_to(tmp_path / "converted")
    assert parts.flow_config == TINY_TEXT_FLOW
    assert parts.vae.name == COMMIT and parts.text_encoder.name == COMMIT  # the snapshots themselves
    assert parts.sampling.guidance == 3.6 and parts.sampling.jacobi  # the official README settings

    def no_conversion(*args, **kwargs):
        raise AssertionError("the converted cache should have been reused")

    monkeypatch.setattr(releases, "convert_official_flow", no_conversion)
    again = resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW)
    assert again.transformer == parts.transformer

    pipe = mlx_pipeline.StarFlowPipeline.from_pretrained(parts)
    result = pipe.generate("a cat", seeds=0, jacobi=False, guidance=1.0)
    assert result.images.shape == (1, 16, 16, 3) and np.isfinite(result.images).all()


def test_complete_cache_needs_no_network(fake_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    real_file, real_snapshot = huggingface_hub.hf_hub_download, huggingface_hub.snapshot_download

    def file_download(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return real_file(*args, **kwargs)

    def snapshot_download(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", file_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    resolve("starflow-3b", flow_config=TINY_TEXT_FLOW)  # an alias
    assert calls == [True, True, True, True]  # flow, VAE, T5's small files, T5's encoder weights


def test_missing_checkpoint_names_repo_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModelFileError) as info:
        resolve("starflow-3b-t2i-256")
    message = str(info.value)
    assert "apple/starflow" in message and "HF_HUB_OFFLINE" in message
    assert "hf download apple/starflow starflow_3B_t2i_256x256.pth" in message


def test_missing_text_encoder_names_its_repo(fake_hub, monkeypatch):
    import shutil

    shutil.rmtree(fake_hub / "models--google--flan-t5-xl" / "snapshots" / COMMIT)
    with pytest.raises(MissingModelFileError, match="hf download google/flan-t5-xl config.json spiece.model"):
        resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW)


def test_our_pipeline_repo_on_the_hub(fake_hub, sources):
    folder = sources["pipeline"]
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    add_to_fake_hub(fake_hub, "someone/tiny-starflow", files, COMMIT)
    parts = resolve("someone/tiny-starflow")
    assert parts.name == "tiny-t2i" and parts.tokenizer.name == "tokenizer"


def test_unknown_model_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="starflow-3b-t2i-256"):
        resolve("not-a-model")
    with pytest.raises(FileNotFoundError, match="neither a pipeline folder"):
        resolve(tmp_path)


def test_text_encoder_reads_and_downloads_only_encoder_shards(fake_hub, tmp_path):
    """A full sharded T5 (encoder + decoder, as google/flan-t5-xl): the shards holding only decoder
    tensors are neither required in the cache nor asked for, and both twins load the encoder."""
    import json
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    from starflow_core.sources.t5_files import encoder_shards
    from starflow_mlx.text import TextEncoder
    from starflow_torch.text import TextEncoder as TorchTextEncoder
    from tests.helpers.tiny_components import randomize_

    t5 = tmp_path / "full_t5"
    make_tiny_t5_folder(t5)  # tokenizer files and an encoder-only checkpoint, replaced below
    (t5 / "model.safetensors").unlink()
    torch.manual_seed(0)
    full = T5ForConditionalGeneration(T5Config.from_pretrained(t5)).eval()
    randomize_(full, seed=3)
    full.save_pretrained(t5, max_shard_size="40KB")
    index = json.loads((t5 / "model.safetensors.index.json").read_text())
    wanted = encoder_shards(index)
    decoder_only = sorted(set(index["weight_map"].values()) - set(wanted))
    assert wanted and decoder_only  # the test needs both kinds of shard
    shutil.rmtree(fake_hub / "models--google--flan-t5-xl")
    files = {p.name: p for p in t5.iterdir() if p.is_file() and p.name not in decoder_only}
    add_to_fake_hub(fake_hub, "google/flan-t5-xl", files, COMMIT)

    parts = resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW)
    assert not any((parts.text_encoder / name).exists() for name in decoder_only)
    tokens = full.get_encoder()
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        expected = tokens(input_ids=ids).last_hidden_state.numpy()
    mlx_encoder = TextEncoder.from_pretrained(parts.text_encoder).model
    got = np.array(mlx_encoder(mx.array(ids.numpy()), mx.ones(ids.shape, dtype=mx.int32)))
    assert np.abs(got - expected).max() < 1e-4  # fp32, 2 layers of width 32: round-off only
    torch_encoder = TorchTextEncoder.from_pretrained(parts.text_encoder).model
    with torch.no_grad():
        twin = torch_encoder(input_ids=ids).last_hidden_state.numpy()
    assert np.abs(twin - expected).max() < 1e-5  # the same torch module, reloaded: round-off only

    # an encoder shard missing: the command to run names the encoder shards, never the decoder's
    blob = (parts.text_encoder / wanted[0]).resolve()
    (parts.text_encoder / wanted[0]).unlink()
    blob.unlink()
    with pytest.raises(MissingModelFileError) as info:
        resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW)
    assert wanted[0] in str(info.value)
    assert not any(name in str(info.value) for name in decoder_only)


def test_conversion_cache_is_written_in_the_run_dtype(fake_hub, tmp_path, monkeypatch):
    """A bf16 run converts the .pth once into bf16 (half the disk); a float32 conversion, when it
    exists, serves every dtype without converting again."""
    import json
    import shutil

    from starflow_core.io import read_safetensors_header

    bf16 = resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW, dtype="bfloat16").transformer
    header = read_safetensors_header(bf16 / "model.safetensors")
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"BF16"}
    fp32 = resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW, dtype="float32").transformer
    assert fp32 != bf16
    size = (fp32 / "model.safetensors").stat().st_size
    assert (bf16 / "model.safetensors").stat().st_size < 0.55 * size
    assert json.loads((bf16 / "config.json").read_text()) == json.loads((fp32 / "config.json").read_text())

    def no_conversion(*args, **kwargs):
        raise AssertionError("an existing conversion should have been used")

    monkeypatch.setattr(releases, "convert_official_flow", no_conversion)
    assert resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW, dtype="bfloat16").transformer == bf16
    shutil.rmtree(bf16)
    assert resolve("starflow-3b-t2i-256", flow_config=TINY_TEXT_FLOW, dtype="bfloat16").transformer == fp32


def no_downloads(monkeypatch):
    """Any download attempt (not a cache lookup) fails the test."""
    real_file, real_snapshot = huggingface_hub.hf_hub_download, huggingface_hub.snapshot_download

    def file_download(*args, **kwargs):
        assert kwargs.get("local_files_only"), "a download was attempted"
        return real_file(*args, **kwargs)

    def snapshot_download(*args, **kwargs):
        assert kwargs.get("local_files_only"), "a download was attempted"
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", file_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


@pytest.fixture
def partial_hub(tmp_path, monkeypatch, sources):
    """A cache with part of the release: the VAE's config (not its weights), the T5 config and
    weight index (not its tokenizer or the encoder shard the index names), no flow checkpoint."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))
    add_to_fake_hub(
        cache, "stabilityai/sd-vae-ft-ema", {"config.json": sources["vae"] / "config.json"}, COMMIT
    )
    index = tmp_path / "index.json"
    index.write_text(
        '{"weight_map": {"encoder.block.0.layer.0.SelfAttention.q.weight": "model-00001-of-00002.safetensors",'
        ' "decoder.block.0.layer.0.SelfAttention.q.weight": "model-00002-of-00002.safetensors"}}'
    )
    t5 = {"config.json": sources["t5"] / "config.json", "model.safetensors.index.json": index}
    add_to_fake_hub(cache, "google/flan-t5-xl", t5, COMMIT)
    return cache


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "no network"])
def test_offline_names_every_missing_file_at_once(why, partial_hub, monkeypatch):
    """One error, before any download, naming each missing file and one `hf download` per repo."""
    no_downloads(monkeypatch)
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

        def unreachable(*args, **kwargs):
            raise OSError("[Errno 101] Network is unreachable")

        monkeypatch.setattr(hub.socket, "create_connection", unreachable)
    with pytest.raises(MissingModelFileError) as info:
        resolve("starflow-3b")
    message = str(info.value)
    assert ("HF_HUB_OFFLINE is set" if why == "HF_HUB_OFFLINE" else "cannot be reached") in message
    commands = [line.strip() for line in message.splitlines() if line.strip().startswith("hf download")]
    assert commands == [  # one per repo, exact names (positional: every `hf` reads them alike)
        "hf download apple/starflow starflow_3B_t2i_256x256.pth",
        "hf download stabilityai/sd-vae-ft-ema config.json diffusion_pytorch_model.safetensors",
        "hf download google/flan-t5-xl config.json spiece.model model.safetensors.index.json "
        "model-00001-of-00002.safetensors",  # the encoder's shard only, read from the cached index
    ]
    listed = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in message.splitlines()[1:4]}
    assert listed["apple/starflow"].strip() == "starflow_3B_t2i_256x256.pth"
    assert (
        listed["stabilityai/sd-vae-ft-ema"].strip() == "diffusion_pytorch_model.safetensors"
    )  # config cached
    assert listed["google/flan-t5-xl"].strip() == "spiece.model, model-00001-of-00002.safetensors"


def test_an_unanswered_connection_is_given_up_quickly(monkeypatch):
    """A network that swallows packets (or a name lookup that hangs) costs `timeout`, not retries:
    the connect below answers only once this test lets it, so an answer of "did not answer" means
    the check gave up without waiting for it (no clock involved; one that waited would get the
    connect's own error, after the hang guard)."""
    import threading

    from helpers.waiting import HANG_GUARD_S

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    released, connects, waits = threading.Event(), [], []

    def hang(*args, **kwargs):  # then fail as a connect timing out would (the thread lives on)
        connects.append(args)
        released.wait(HANG_GUARD_S)
        raise OSError("timed out")

    class Thread(threading.Thread):
        def join(self, timeout=None):
            waits.append(timeout)
            super().join(timeout)

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    monkeypatch.setattr(hub.threading, "Thread", Thread)
    try:
        assert "did not answer" in hub.hub_unreachable_reason(timeout=0.2)
    finally:
        released.set()
    assert len(connects) == 1 and waits == [0.2]  # one try, waited for as long as asked


def test_a_reachable_hub_lets_downloads_be_tried(monkeypatch):
    class Connection:
        def close(self):
            pass

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    seen = []
    monkeypatch.setattr(
        hub.socket, "create_connection", lambda address, timeout: seen.append(address) or Connection()
    )
    assert hub.hub_unreachable_reason() is None and seen == [("hub.example", 8443)]
