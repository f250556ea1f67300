"""The evaluation commands end to end on the shipped digits model: sample-eval writes a set both
twins agree on and resumes it, starflow-eval measures it (FID, precision/recall, the classifier
score, bits/dim with its interval) as the library's maths says; Inception weights never download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from starflow_core.digits import load_digits_split
from starflow_core.evaluation.digit_features import DigitFeatures
from starflow_core.evaluation.metrics import FeatureStatistics, frechet_distance
from starflow_core.generation.images import to_uint8
from starflow_torch import eval as torch_eval
from starflow_torch import sample_eval as torch_sample_eval

REPO = Path(__file__).resolve().parents[1]
SAMPLE = [
    "-n",
    "5",
    "--shard-size",
    "2",
    "--batch-size",
    "2",
    "--seed",
    "10",
    "--dtype",
    "float32",
    "--quiet",
]


def shard_arrays(folder: Path) -> dict[str, np.ndarray]:
    shards = [np.load(p) for p in sorted(folder.glob("samples_*.npz"))]
    return {key: np.concatenate([s[key] for s in shards]) for key in ("arr_0", "arr_1", "seeds")}


def run_mlx(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # its own process: MLX switches BLAS process-wide
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory):
    """5 demo digits from the torch twin (classes 0..4, seeds 10..14), and the real training digits."""
    tmp = tmp_path_factory.mktemp("eval_commands")
    assert torch_sample_eval.main([*SAMPLE, "--device", "cpu", "-o", str(tmp / "torch")]) == 0
    split = load_digits_split(seed=0)
    np.savez(tmp / "real.npz", arr_0=to_uint8(split.train_images[:200, ..., None]))
    return tmp


def test_sample_eval_writes_the_set_and_resumes_it(digits_set, capsys):
    arrays = shard_arrays(digits_set / "torch")
    assert arrays["arr_0"].shape == (5, 8, 8, 3) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [0, 1, 2, 3, 4] and arrays["seeds"].tolist() == [10, 11, 12, 13, 14]
    manifest = json.loads((digits_set / "torch/manifest.json").read_text())
    assert manifest["sampling"]["guidance"] == 1.0 and manifest["model"] == "starflow-digits-demo"
    capsys.readouterr()
    assert torch_sample_eval.main([*SAMPLE, "--device", "cpu", "-o", str(digits_set / "torch")]) == 0
    assert "every shard of this rank is complete (3 shards)" in capsys.readouterr().out
    assert (
        torch_sample_eval.main([*SAMPLE, "--cfg", "0", "--device", "cpu", "-o", str(digits_set / "torch")])
        == 2
    )
    assert "made with other parameters (sampling:" in capsys.readouterr().err


def test_eval_reports_what_the_library_computes(digits_set, capsys):
    out = digits_set / "result.json"
    args = [str(digits_set / "torch"), "--reference", str(digits_set / "real.npz"), "--features", "digits"]
    assert (
        torch_eval.main([*args, "--bits-per-dim", "--k", "2", "--quiet", "--device", "cpu", "-o", str(out)])
        == 0
    )
    got = json.loads(out.read_text())
    features = DigitFeatures.load()
    samples = features(shard_arrays(digits_set / "torch")["arr_0"])[0]
    real = features(np.load(digits_set / "real.npz")["arr_0"])[0]
    want = frechet_distance(FeatureStatistics.of(samples), FeatureStatistics.of(real))
    # float64 both, features taken in other batch shapes (other summation orders); 5 samples in
    # 64 dimensions: the square roots of the covariance's ~1e-16 zero eigenvalues add ~1e-8
    assert got["fid"] == pytest.approx(want, rel=1e-6)
    assert 0 <= got["precision"] <= 1 and 0 <= got["recall"] <= 1 and got["k"] == 2
    low, high = got["bits_per_dim_95"]
    assert low < got["bits_per_dim"] < high and got["bits_per_dim_model"] == "starflow-digits-demo"
    assert "FID" in capsys.readouterr().out


def test_the_mlx_twin_makes_the_same_set_and_measures_the_same_bits(digits_set):
    done = run_mlx("starflow_mlx.sample_eval", *SAMPLE, "-o", str(digits_set / "mlx"))
    assert done.returncode == 0, done.stderr[-2000:]
    mlx_images = shard_arrays(digits_set / "mlx")["arr_0"].astype(int)
    torch_images = shard_arrays(digits_set / "torch")["arr_0"].astype(int)
    # the twins' samples agree to ~1e-5 in [-1, 1]: a pixel may round to the next of 256 levels
    assert np.abs(mlx_images - torch_images).max() <= 1
    done = run_mlx(
        "starflow_mlx.eval",
        str(digits_set / "torch"),
        "--features",
        "digits",
        "--bits-per-dim",
        "--json",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mlx_bits = json.loads(done.stdout)["bits_per_dim"]
    torch_bits = json.loads((digits_set / "result.json").read_text())["bits_per_dim"]
    assert mlx_bits == pytest.approx(torch_bits, abs=1e-4)  # fp32 flows in two frameworks


def test_inception_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as caught:
        torch_eval.inception_weights(None)
    message = str(caught.value)
    assert torch_eval.INCEPTION_FILE in message and torch_eval.INCEPTION_URL in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "--weights" in message
    bad = tmp_path / "code.pth"
    bad.write_bytes(b"\x80\x02c__builtin__\nprint\n.")  # a pickle that names a function
    with pytest.raises(Exception, match="Weights only load failed|Unsupported|global"):
        torch_eval.inception_network(bad, torch.device("cpu"))


@pytest.mark.slow  # Inception-v3 at 299x299 on a CPU: about a minute
def test_the_inception_path_on_random_weights_of_the_real_architecture(tmp_path, monkeypatch, capsys):
    """Shapes and plumbing of the FID Inception (torch-fidelity's port of the TF graph) with random
    weights saved as a weights file: the real weights cannot be fetched in the test suite."""
    module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    network_class = module.FeatureExtractorInceptionV3

    def no_download(*args, **kwargs):
        raise AssertionError("the Inception weights must never be downloaded")

    monkeypatch.setattr(module, "load_state_dict_from_url", no_download)
    with monkeypatch.context() as patched:  # build the architecture without any weights file
        patched.setattr(network_class, "load_state_dict", lambda self, state: None)
        patched.setattr(module, "load_state_dict_from_url", lambda *args, **kwargs: {})
        torch.manual_seed(0)
        random_network = network_class("inception-v3-compat", ["2048"])
    weights = tmp_path / torch_eval.INCEPTION_FILE
    torch.save(random_network.state_dict(), weights)

    network = torch_eval.inception_network(weights, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for side in (8, 64):  # any size: resized to 299 inside, as the TF graph does
        pool, logits = torch_eval.inception_features(
            network, rng.integers(0, 256, (2, side, side, 3), np.uint8), "cpu"
        )
        assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and np.isfinite(pool).all()
    np.savez(tmp_path / "a.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "b.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), np.uint8))
    args = [str(tmp_path / "a.npz"), "--reference", str(tmp_path / "b.npz"), "--weights", str(weights)]
    assert torch_eval.main([*args, "--json", "--quiet", "--device", "cpu", "--splits", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["features"] == "inception" and np.isfinite(result["fid"]) and "inception_score" in result


def byte_characters() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (the base vocabulary of CLIP's BPE)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]


def tiny_clip_folder(path: Path) -> Path:
    """A random CLIP (transformers layout) with a byte-level tokenizer without merges."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path.mkdir(parents=True)
    tokens = (
        byte_characters() + [c + "</w>" for c in byte_characters()] + ["<|startoftext|>", "<|endoftext|>"]
    )
    vocab = {token: i for i, token in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    eos = vocab["<|endoftext|>"]
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    text.update(max_position_embeddings=32, eos_token_id=eos, bos_token_id=eos - 1, pad_token_id=eos)
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_clip_score_of_a_text_set_is_the_clamped_cosine(tmp_path, capsys):
    from transformers import CLIPModel, CLIPProcessor

    folder = tiny_clip_folder(tmp_path / "clip")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), np.uint8)
    prompts = ["a cat", "dog", "a red fox in the snow", "seven", "x"]
    np.savez(tmp_path / "set.npz", arr_0=images, prompts=np.asarray(prompts))
    args = [str(tmp_path / "set.npz"), "--features", "digits", "--clip", str(folder), "--batch-size", "2"]
    assert torch_eval.main([*args, "--json", "--quiet", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)["clip_score"]

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():  # by hand: each tower, its projection, cosine, x100, clamped at 0 per image
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    want = float((100 * cosine).clamp(min=0).mean())
    assert got == pytest.approx(want, abs=1e-4)  # float32 towers, batches of 2 vs 5
    assert (cosine != 0).all()

    (tmp_path / "empty").mkdir()
    assert torch_eval.main([*args[:-4], "--clip", str(tmp_path / "empty"), "--quiet", "--device", "cpu"]) == 2
    assert "is not a complete CLIP folder" in capsys.readouterr().err
    np.savez(tmp_path / "no_prompts.npz", arr_0=images)
    assert torch_eval.main([str(tmp_path / "no_prompts.npz"), *args[1:], "--quiet", "--device", "cpu"]) == 2
    assert "the CLIP score needs a text model's sample set" in capsys.readouterr().err


def test_bits_per_dim_of_latent_shards_in_both_twins(tmp_path, capsys):
    from helpers.training import STARFLOW_TINY, encode_caption_shards

    from starflow_core import FlowConfig
    from starflow_torch import StarFlow

    shards = encode_caption_shards(tmp_path, count=7)  # text features, 4x4x4 latents, shards of 5 and 2
    torch.manual_seed(0)
    flow = StarFlow(FlowConfig(**STARFLOW_TINY))
    with torch.no_grad():  # proj_out starts at zero (identity blocks): perturb so the text matters
        for name, parameter in flow.named_parameters():
            if "proj_out" in name:
                parameter.normal_(0.0, 0.05)
    flow.save_pretrained(tmp_path / "flow")
    args = [
        str(shards),
        "--bits-per-dim",
        "--model",
        str(tmp_path / "flow"),
        "--batch-size",
        "3",
        "--json",
        "--quiet",
    ]
    assert torch_eval.main([*args, "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)

    from safetensors.numpy import load_file

    files = [
        load_file(str(shards / s["file"])) for s in json.loads((shards / "index.json").read_text())["shards"]
    ]
    latents = torch.from_numpy(np.concatenate([f["latents"] for f in files]).astype(np.float32))
    text = torch.from_numpy(np.concatenate([f["text"] for f in files]).astype(np.float32))
    with torch.no_grad():
        want = flow.bits_per_dim(latents, text).double().numpy()
        unconditioned = flow.bits_per_dim(latents, torch.zeros_like(text)).double().numpy()
    assert got["count"] == 7 and got["bits_per_dim"] == pytest.approx(
        want.mean(), rel=1e-6
    )  # fp32, same kernels
    assert abs(unconditioned.mean() - want.mean()) > 1e-3  # the text features change the density
    low, high = got["bits_per_dim_95"]
    assert low < got["bits_per_dim"] < high
    done = run_mlx("starflow_mlx.eval", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["bits_per_dim"] == pytest.approx(want.mean(), abs=1e-4)  # fp32 twins
    assert torch_eval.main([*args, "--device", "cpu", "--clip", str(tmp_path)]) == 2
    assert "holds encoded latents: measure them with --bits-per-dim alone" in capsys.readouterr().err
