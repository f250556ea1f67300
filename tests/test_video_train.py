"""Training video models: the official video objective (flow loss on clips, the learned
self-denoiser's loss on the score of the noisy input, first-frame dropout) in both trainers.

- The twins' objectives give the same losses and gradients on tiny video models covering the
  options (temporal_causal 1 and 2, patch 2, non-square frames, with and without the denoiser,
  a text-conditioned denoiser and an unconditional one, a label model, a local window).
- The torch objective against an independent computation: the official get_loss of the
  official code's own z and log-det (vectors/starflow_video), and the denoiser target from a
  plain autograd gradient of model.loss, checked by a finite difference.
- First-frame dropout: the rate, the frames dropped, the caption prefix, the same draws in
  both twins.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_vectors
from helpers.twins import random_torch_model
from mlx.utils import tree_flatten

from starflow_core.config import FlowConfig
from starflow_core.training.config import TrainConfig
from starflow_core.training.video_objective import EXTEND_PREFIX, drops_first_frame, loss_weight
from starflow_mlx.model import StarFlow as MlxStarFlow
from starflow_mlx.training.inputs import InputBuilder as MlxInputBuilder
from starflow_mlx.training.objective import FlowObjective as MlxFlowObjective
from starflow_mlx.training.objective import StepGradients
from starflow_torch import StarFlow
from starflow_torch.training.inputs import InputBuilder
from starflow_torch.training.objective import TrainingObjective

# a text-conditioned video STARFlow: frames of 4x6 pixels in 2x3 patches of 2x2 (non-square)
BASE = FlowConfig(
    in_channels=2,
    img_size=4,
    patch_size=2,
    channels=32,
    num_blocks=3,
    layers_per_block=(1, 1, 1),
    head_dim=16,
    rope=True,
    sos=True,
    txt_size=2,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    use_final_norm=True,
    soft_clip=2.0,
    seq_order="L2R",
    noise_std=0.3,
)
CASES = {
    # the 7B's options: lookahead 2, frame-local shallow blocks, a wider deep block, a
    # text-conditioned denoiser seeing 1 frame behind
    "tc2-denoiser": BASE.replace(
        temporal_causal=2,
        shallow_block_local=True,
        top_block_channels=48,
        learnable_self_denoiser=True,
        conditional_denoiser=True,
        denoiser_window=1,
    ),
    # an unconditional denoiser, a local attention window, the latent-norm regulariser
    "tc1-window-denoiser": BASE.replace(
        temporal_causal=1, shallow_block_local=True, local_attn_window=2, learnable_self_denoiser=True
    ),
    # labels through the text path (the demo's way), every block across frames, no denoiser
    "tc1-labels": BASE.replace(temporal_causal=1, txt_size=1, txt_dim=5, num_classes=4),
}
REGULARISER = {"tc2-denoiser": 0.0, "tc1-window-denoiser": 1e-2, "tc1-labels": 0.0}
WEIGHT = {"tc2-denoiser": 0.5 / 0.3, "tc1-window-denoiser": 1.0, "tc1-labels": 1.0}  # cond_noise_level's
FRAMES, HEIGHT, WIDTH = 3, 4, 6


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def video_inputs(config: FlowConfig, batch: int = 2, seed: int = 0):
    """(x (B, T, C, H, W) numpy, condition numpy: text features or labels with a dropped one)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, FRAMES, config.in_channels, HEIGHT, WIDTH)).astype(np.float32)
    if config.label_conditioned:
        y = np.array([2, -1][:batch], dtype=np.int64)
    else:
        y = rng.standard_normal((batch, config.txt_size, config.txt_dim)).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", list(CASES))
def test_video_losses_and_gradients_match_torch(name, tmp_path):
    """Measured: losses within 2.5e-7 relative, gradients within 9e-7 of each tensor's scale.

    Tolerance 1e-4 of the scale, as for images (tests/test_mlx_train.py): two libraries' fp32
    kernels sum in different orders, and the denoiser's target is itself a gradient."""
    torch.set_num_threads(1)
    config = CASES[name]
    torch_model = random_torch_model(config, seed=0)
    torch_model.save_pretrained(tmp_path)
    torch_model.train()
    model = MlxStarFlow.from_pretrained(tmp_path)
    x, y = video_inputs(config)
    reg = REGULARISER[name]

    weight = WEIGHT[name]
    loss, flow_loss, den_loss = TrainingObjective(torch_model, reg, config.noise_std, weight)(
        torch.from_numpy(x), torch.from_numpy(y)
    )
    (loss + den_loss).backward()
    step = StepGradients(model, MlxFlowObjective(reg, weight), config.noise_std)
    m_y = mx.array(y.astype(np.int32)) if config.label_conditioned else mx.array(y)
    m_loss, m_flow, m_den, grads, den_grads = step(mx.array(x.transpose(0, 1, 3, 4, 2)), m_y)

    for got, want in ((m_loss, loss), (m_flow, flow_loss), (m_den, den_loss)):
        assert abs(got.item() - want.item()) <= 1e-4 * abs(want.item()) + 1e-9
    if config.learnable_self_denoiser:
        assert den_loss.item() > 0  # the denoiser's target is non-zero: the comparison checks it
    else:
        assert den_loss.item() == 0 and den_grads == {}
    mlx_grads = dict(tree_flatten(grads))
    mlx_grads.update({f"learnable_self_denoiser.{k}": v for k, v in tree_flatten(den_grads)})
    torch_grads = {name: p.grad for name, p in torch_model.named_parameters()}
    assert set(mlx_grads) == set(torch_grads)
    zero = [n for n, g in torch_grads.items() if g is None or not g.abs().max() > 0]
    assert not zero, f"gradients exactly zero, so the comparison checks nothing there: {zero}"
    for key, grad in mlx_grads.items():
        assert relative_error(np.array(grad), torch_grads[key].numpy()) < 1e-4, key


def test_the_video_flow_loss_is_the_official_get_loss():
    """The objective on vectors/starflow_video against official get_loss of the official code's
    own z and log-det; fp32 sums over the clip: 1e-4 relative (SPEC section 7)."""
    config, vectors = load_vectors("starflow_video")
    model = StarFlow.from_official(FIXTURES / "starflow_video" / "official.pth", config)
    x, y = torch.from_numpy(vectors["x"]), torch.from_numpy(vectors["y"])
    _, flow_loss, den_loss = TrainingObjective(model, 0.0, 0.3)(x, y)
    assert den_loss.item() > 0  # the official checkpoint has a denoiser: both losses computed
    z = vectors["z"].astype(np.float64)
    official = np.mean(0.5 * np.mean(z.reshape(len(z), -1) ** 2, axis=1) - vectors["logdet"] / x[0].numel())
    assert abs(flow_loss.item() - official) <= 1e-4 * max(1.0, abs(official))


def test_the_denoiser_regresses_the_scaled_score():
    """loss_denoiser = mean((denoiser(x, y) - numel(x) * noise_std * d loss / d x)^2), the
    official target, from a plain gradient of the official get_loss; that gradient checked along a random
    direction by a central difference."""
    config = CASES["tc2-denoiser"]
    model = random_torch_model(config, seed=1).double().train()
    x, y = (torch.from_numpy(a) for a in video_inputs(config, seed=1))
    x, y = x.double(), y.double()
    noise_std = 0.25  # not the config's, so a target scaled by the wrong noise level shows
    _, _, den_loss = TrainingObjective(model, 0.0, noise_std)(x, y)

    def loss(v: torch.Tensor) -> torch.Tensor:  # official get_loss, in float64 throughout
        z, logdet = model(v, y)
        return (0.5 * z.square().flatten(1).mean(1) - logdet / v[0].numel()).mean()

    x_var = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x_var), x_var)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-2
    with torch.no_grad():
        difference = (loss(x + eps * direction) - loss(x - eps * direction)) / (2 * eps)
    # the model sums its log-det in float32 (1e-7 / eps = 1e-5 here), the difference's
    # truncation is O(eps^2): 1e-4 relative; measured 2.7e-5
    assert abs((grad * direction).sum().item() - difference.item()) <= 1e-4 * abs(difference.item())
    with torch.no_grad():
        want = (model.learned_denoise(x, y) - x.numel() * noise_std * grad).square().mean()
    # the objective works in float32 (the trainers' precision): 1e-6 relative, measured 5e-8
    assert abs(den_loss.item() - want.item()) <= 1e-6 * want.item()


# ----- first-frame dropout ----------------------------------------------------------------
def test_first_frame_dropout_rate():
    """Over 4000 micro-steps the fraction is the rate (binomial sd 0.007 at 0.25: 0.03 is 4 sd,
    and the draws are seeded, so the test is deterministic)."""
    for rate in (0.25, 0.6):
        drops = [drops_first_frame(0, step, rate) for step in range(4000)]
        assert abs(np.mean(drops) - rate) < 0.03, rate
    assert not any(drops_first_frame(0, step, 0.0) for step in range(100))
    assert [drops_first_frame(1, s, 0.5) for s in range(40)] != [
        drops_first_frame(0, s, 0.5) for s in range(40)
    ]


class Captions:
    """A stand-in clip dataset with captions (InputBuilder reads conditioning and text_of)."""

    conditioning = "text"

    def text_of(self, index: int) -> str:
        return f"clip {index}"


class RecordingEncoder:
    def __init__(self, zeros=mx.zeros):
        self.prompts, self.zeros = [], zeros

    def encode(self, prompts, length):
        self.prompts.append(list(prompts))
        return self.zeros((len(prompts), length, 8))


def test_both_twins_drop_the_first_frame_after_the_noise_on_the_same_micro_steps():
    train = TrainConfig(data="clips", batch_size=2, num_frames=3, drop_image=0.5, drop_label=0.0, seed=3)
    config = BASE.replace(temporal_causal=1)
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 6, 2)).astype(np.float32)  # (B, T, H, W, C)
    batch = {"video": clips, "slot": np.arange(2), "index": np.arange(2), "valid": True}
    encoder = RecordingEncoder()
    mlx_builder = MlxInputBuilder(config, train, Captions(), encoder)
    torch_builder = InputBuilder(config, train, None, torch.device("cpu"))
    torch_batch = {
        "video": torch.from_numpy(clips.transpose(0, 1, 4, 2, 3)),
        "slot": torch.arange(2),
        "valid": True,
    }
    full = [step for step in range(12) if not drops_first_frame(3, step, 0.5)]
    dropped = [step for step in range(12) if drops_first_frame(3, step, 0.5)]
    assert full and dropped
    without = MlxInputBuilder(
        config, dataclasses.replace(train, drop_image=0.0), Captions(), RecordingEncoder()
    )
    for step in range(12):
        extend = step in dropped
        x = np.array(mlx_builder(batch, step).x)
        assert x.shape == (2, 2 if extend else 3, 4, 6, 2)
        assert encoder.prompts[-1] == [(EXTEND_PREFIX if extend else "") + f"clip {i}" for i in range(2)]
        assert torch_builder(torch_batch, step).x.shape[1] == x.shape[1]
        # the noise is drawn for the whole clip, then frame 0 goes: the rest is the same noisy clip
        whole = np.array(without(batch, step).x)
        assert np.array_equal(x, whole[:, 1:] if extend else whole)


def test_captions_get_the_official_prompt_templates_in_both_twins():
    """fps_cond, cond_noise_level and mix_aspect as official train.py + encode_text apply them:
    "(extend) " first, a dropped caption wrapped as the empty prompt, each clip's own rate, the
    training noise level, the bucket of the batch's 6x4 frames, 3:2 (strings written out by hand)."""
    flags = dict(fps_cond=True, cond_noise_level=True, mix_aspect=True, text_encoder="t5")
    train = TrainConfig(data="clips", batch_size=2, num_frames=3, drop_image=0.5, seed=3, **flags)
    config = BASE.replace(temporal_causal=1, noise_std=0.25)
    clips = np.zeros((2, 3, 4, 6, 2), np.float32)
    batch = {
        "video": clips,
        "slot": np.arange(2),
        "index": np.arange(2),
        "valid": True,
        "fps": np.array([8, 16]),
    }
    encoder, torch_encoder = RecordingEncoder(), RecordingEncoder(lambda shape: torch.zeros(shape))
    mlx_builder = MlxInputBuilder(config, train, Captions(), encoder)
    torch_builder = InputBuilder(config, train, Captions(), torch.device("cpu"), torch_encoder)
    torch_batch = {
        "video": torch.zeros(2, 3, 2, 4, 6),
        "slot": torch.arange(2),
        "index": torch.arange(2),
        "valid": True,
        "fps": torch.tensor([8, 16]),
        "text": ["clip 0", "clip 1"],
    }
    seen = set()
    for step in range(16):
        mlx_builder(batch, step)
        torch_builder(torch_batch, step)
        assert encoder.prompts[-1] == torch_encoder.prompts[-1]
        seen.update(encoder.prompts[-1])
    assert "Noise Level 250:\nA video with 8 fps:\n(extend) clip 0\n\n in a 3:2 aspect ratio.\n" in seen
    assert "Noise Level 250:\nA video with 16 fps:\nclip 1\n\n in a 3:2 aspect ratio.\n" in seen
    # label dropout draws differ between the twins' generators: the dropped prompt, MLX only
    dropping = MlxInputBuilder(config, dataclasses.replace(train, drop_label=0.9), Captions(), encoder)
    dropped_in_extend_steps = 0
    for step in range(16):
        dropping(batch, step)
        extend = drops_first_frame(3, step, 0.5)
        for prompt in encoder.prompts[-1]:
            if "fps:\n\n\n" in prompt:  # a dropped caption is the wrapped empty prompt, prefix and all
                assert prompt == "Noise Level 250:\nA video with 16 fps:\n\n\n in a 3:2 aspect ratio.\n" or (
                    prompt == "Noise Level 250:\nA video with 8 fps:\n\n\n in a 3:2 aspect ratio.\n"
                )
                dropped_in_extend_steps += extend
            else:
                assert ("(extend) clip" in prompt) == extend
    assert dropped_in_extend_steps > 0
    assert loss_weight(train, 0.25) == pytest.approx(0.25 / 0.3)
    assert loss_weight(dataclasses.replace(train, cond_noise_level=False), 0.25) == 1.0
