"""The MLX training loop: one function, `train(run)`, on one device (Apple GPU or CPU).

The twin of starflow_torch/training/trainer.py with the same run file, objective,
schedule, data order and checkpoint layout. A step accumulates `grad_accum`
micro-batches, clips the gradient, and applies AdamW (with bias correction, as
torch.optim.AdamW) unless the loss or gradient norm is not finite (then the update is
skipped and counted). SIGTERM / SIGINT finish the current step, save a checkpoint and
return. MLX trains in float32 (train.bf16, parallel and gradient_checkpointing are
torch settings).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from starflow_core.extras import require
from starflow_core.training.config import RunConfig
from starflow_core.training.evaluation import is_due
from starflow_core.training.files import reading_checkpoint
from starflow_core.training.guards import CorruptImages, check_resume_data, non_finite_weights_error
from starflow_core.training.run_folder import claim_run_folder
from starflow_core.training.schedule import Progress, StopSignal, ema_decay_at
from starflow_core.training.video_objective import (
    DENOISER_BETAS,
    DENOISER_KEY,
    DENOISER_WEIGHT_DECAY,
    loss_weight,
)

from ..data import ImageFolderDataset
from ..model import StarFlow
from . import state
from .evaluation import HeldOutEvaluation
from .inputs import InputBuilder, batch_stream, build_dataset, sample_conditions
from .objective import FlowObjective, StepGradients, bits_per_dim_from_loss, learning_rate
from .progress import JsonlLog, plot_loss_curve, sample_grid, save_png


@dataclass
class TrainResult:
    progress: Progress
    losses: list[float] = field(default_factory=list)  # mean loss of every step of this invocation
    checkpoint: Path | None = None
    interrupted: bool = False  # stopped before train.steps (a stop signal, or stop_at_step)
    signalled: bool = False  # the stop came from a signal (Ctrl-C, SIGTERM), not from stop_at_step


def train(
    run: RunConfig,
    resume: str | Path | None = None,
    stop_at_step: int | None = None,
    allow_data_change: bool = False,
) -> TrainResult:
    """Train (or continue) a run; stop_at_step saves and stops early, like a signal would.

    The run folder is locked for the run (a second trainer on it is refused), and a fresh
    run is refused in a folder that already holds one (starflow_core.training.run_folder).
    """
    require("mlx.data", "training with MLX")  # before the run folder is touched
    claim = claim_run_folder(run.train.out_dir, resume, state.resolve_checkpoint)
    with StopSignal() as stop, claim as resume_dir:
        return Trainer(run, resume_dir, allow_data_change).run(stop, stop_at_step)


class Trainer:
    def __init__(self, run: RunConfig, resume: str | Path | None, allow_data_change: bool = False):
        self.run_config, self.config, self.train = run, run.model, run.train
        if self.train.gradient_checkpointing:
            raise ValueError("train.gradient_checkpointing is a torch setting; the MLX trainer has none")
        self.out_dir = Path(self.train.out_dir)
        self.progress = Progress()
        resume_dir = state.resolve_checkpoint(resume) if resume is not None else None
        if resume_dir is not None:
            state.check_resume_compatible(resume_dir, self.config, self.train.to_dict())

        text_encoder = self._load_component("text", self.train.text_encoder)
        self.dataset = build_dataset(self.config, self.train)
        self.data_fingerprint = self.dataset.fingerprint()
        if resume_dir is not None:
            check_resume_data(resume_dir, self.data_fingerprint, allow_data_change)
        self.corrupt = CorruptImages(self.dataset, self.out_dir)
        self.inputs = InputBuilder(self.config, self.train, self.dataset, text_encoder)

        self.model = self._initial_model(resume_dir)
        self.objective = FlowObjective(
            self.train.latent_norm_reg, loss_weight(self.train, self.inputs.noise_std)
        )
        step_gradients = StepGradients(self.model, self.objective, self.inputs.noise_std)
        self.loss_and_grad = step_gradients
        if not (self.config.family == "tarflow" and self.config.num_classes):
            # compiled: 1.5x faster per step on the digits model on CPU, retraced when shapes
            # change. Not for TARFlow class models: their label range check reads the labels.
            self.loss_and_grad = mx.compile(
                lambda x, y: step_gradients(x, y), inputs=self.model.state, outputs=self.model.state
            )
        self.optimizer = optim.AdamW(
            learning_rate=self.train.lr,
            betas=list(self.train.betas),
            weight_decay=self.train.weight_decay,
            bias_correction=True,
        )
        self.optimizer.init(self.flow_parameters())
        self.denoiser_optimizer = None
        if self.config.learnable_self_denoiser:  # official: its own AdamW
            self.denoiser_optimizer = optim.AdamW(
                learning_rate=self.train.denoiser_lr,
                betas=list(DENOISER_BETAS),
                weight_decay=DENOISER_WEIGHT_DECAY,
                bias_correction=True,
            )
            self.denoiser_optimizer.init(self.model.learnable_self_denoiser.trainable_parameters())
        self.ema = None
        if self.train.ema_decay > 0:
            self.ema = tree_map(lambda p: p.astype(mx.float32), self.model.trainable_parameters())
        if resume_dir is not None:
            self._restore(resume_dir)
        self.log = JsonlLog(self.out_dir / "log.jsonl", self.progress.step if resume_dir else None)
        self.vae = self._load_component("vae", self.train.vae)
        pixel_space = isinstance(self.dataset, ImageFolderDataset)
        resume_step = self.progress.step if resume_dir else None
        self.evaluation = HeldOutEvaluation.create(
            run, self.out_dir, text_encoder, self.vae, pixel_space, resume_step
        )

    # ----- setup ------------------------------------------------------------------------
    def flow_parameters(self) -> dict:
        """The trainable parameters the flow's optimizer updates (all but the denoiser's)."""
        return {k: v for k, v in self.model.trainable_parameters().items() if k != DENOISER_KEY}

    def _initial_model(self, resume_dir: Path | None) -> StarFlow:
        if resume_dir is not None:
            with reading_checkpoint(resume_dir):
                return StarFlow.from_pretrained(resume_dir, dtype=mx.float32)
        if self.train.init_weights:
            model = StarFlow.from_pretrained(self.train.init_weights, dtype=mx.float32)
            if model.config != self.config:
                raise ValueError(
                    f"train.init_weights={self.train.init_weights} holds a different model config"
                )
            return model
        mx.random.seed(self.train.seed)
        return StarFlow(self.config)

    @staticmethod
    def _load_component(kind: str, folder: str | None):
        if folder is None:
            return None
        if kind == "vae":
            from ..vae import AutoencoderKL

            return AutoencoderKL.from_pretrained(folder)
        from ..text import TextEncoder

        return TextEncoder.from_pretrained(folder)

    def _restore(self, folder: Path) -> None:
        with reading_checkpoint(folder):
            self.progress, optimizer_state = state.load_training_state(folder)
            self.optimizer.state = optimizer_state
            if self.denoiser_optimizer is not None:
                self.denoiser_optimizer.state = state.load_denoiser_optimizer_state(folder)
            if self.ema is not None:
                ema_model = StarFlow.from_pretrained(folder / "ema", dtype=mx.float32)
                self.ema = ema_model.trainable_parameters()

    # ----- the loop ---------------------------------------------------------------------
    def run(self, stop: StopSignal, stop_at_step: int | None) -> TrainResult:
        result = TrainResult(self.progress)
        p = self.progress
        stream = batch_stream(self.dataset, self.train, p.epoch, p.batch_in_epoch)
        bar = self._progress_bar()
        try:
            self._loop(stream, stop, stop_at_step, result, bar)
        finally:
            bar.close()  # ends the bar's line, so an error message starts on a line of its own
            # the data workers stop here, not at interpreter exit: there multiprocessing's exit
            # handler SIGTERMs them, which they ignore (stop signals belong to this process),
            # and then waits for them forever
            stream.close()
        return result

    def _loop(self, stream, stop: StopSignal, stop_at_step: int | None, result: TrainResult, bar) -> None:
        p = self.progress
        last_log_time, last_log_samples = time.perf_counter(), p.samples_seen
        while p.step < self.train.steps:
            metrics = self.step(stream)
            result.losses.append(metrics["loss"])
            signalled = stop.received
            stopping = signalled or p.step == stop_at_step
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", skipped=p.skipped_steps)
            if p.step % self.train.log_every == 0 or p.step == self.train.steps:
                now = time.perf_counter()
                metrics["samples_per_s"] = (p.samples_seen - last_log_samples) / max(
                    now - last_log_time, 1e-9
                )
                last_log_time, last_log_samples = now, p.samples_seen
                self.log.write(metrics)
            if self.train.sample_every and p.step % self.train.sample_every == 0:
                self.save_samples()
            if is_due(self.train, p.step):  # held-out bits/dim and FID, on the weights samples use
                weights = self.ema if self.ema is not None else self.model.trainable_parameters()
                self.evaluation(weights, p.step, self.log.records())
            if p.step % self.train.save_every == 0 or p.step == self.train.steps or stopping:
                result.checkpoint = self.save()
            if stopping:
                result.interrupted, result.signalled = True, signalled
                break

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.train.steps, initial=self.progress.step, desc="train", dynamic_ncols=True)

    def step(self, stream) -> dict:
        p, train = self.progress, self.train
        lr = learning_rate(p.step, train.lr, train.min_lr, train.warmup_steps, train.steps)
        self.optimizer.learning_rate = lr
        grads_sum, den_grads_sum, corrupt, valid, unreadable = None, None, 0, 0.0, []
        loss_sum, flow_loss_sum, den_loss_sum = 0.0, 0.0, 0.0
        for _ in range(train.grad_accum):
            p.epoch, p.batch_in_epoch, batch = next(stream)
            corrupt += batch["corrupt"]
            unreadable += batch["corrupt_index"]
            inputs = self.inputs(batch, p.micro_step)
            valid += inputs.weight
            p.micro_step += 1
            loss, flow_loss, den_loss, grads, den_grads = self.loss_and_grad(inputs.x, inputs.y)
            scale = inputs.weight / train.grad_accum
            grads_sum = accumulate(grads_sum, grads, scale)
            den_grads_sum = accumulate(den_grads_sum, den_grads, scale)
            mx.eval(loss, flow_loss, den_loss, grads_sum, den_grads_sum)
            loss_sum += loss.item() * inputs.weight
            flow_loss_sum += flow_loss.item() * inputs.weight
            den_loss_sum += den_loss.item() * inputs.weight
        # a clip of 0 disables clipping; the norm is still measured and logged
        grads_sum, grad_norm = optim.clip_grad_norm(grads_sum, train.grad_clip or math.inf)
        grad_norm, den_norm = grad_norm.item(), 0.0
        if den_grads_sum is not None:  # clipped on its own, as the official trainer does
            den_grads_sum, den_norm = optim.clip_grad_norm(den_grads_sum, train.grad_clip or math.inf)
            den_norm = den_norm.item()
        loss_mean, flow_loss_mean = loss_sum / train.grad_accum, flow_loss_sum / train.grad_accum
        finite = all(math.isfinite(v) for v in (loss_sum, grad_norm, den_loss_sum, den_norm))
        if not finite or valid == 0:
            p.skipped_steps += 1  # the NaN/inf guard, or no readable image: no update from this step
        else:
            self.optimizer.update(self.model, grads_sum)
            if self.denoiser_optimizer is not None:
                self.denoiser_optimizer.learning_rate = learning_rate(
                    p.step, train.denoiser_lr, train.denoiser_min_lr, train.warmup_steps, train.steps
                )
                self.denoiser_optimizer.update(self.model.learnable_self_denoiser, den_grads_sum)
            if not weights_are_finite(self.model):  # checked before the EMA or a checkpoint sees them
                raise non_finite_weights_error(p.step + 1, lr, grad_norm, self.out_dir)
            if self.ema is not None:
                decay = ema_decay_at(train.ema_decay, p.step, train.ema_warmup)
                self.ema = tree_map(
                    lambda e, q: e + (1.0 - decay) * (q.astype(mx.float32) - e),
                    self.ema,
                    self.model.trainable_parameters(),
                )
            optimizer_states = [o.state for o in (self.optimizer, self.denoiser_optimizer) if o is not None]
            mx.eval(self.model.parameters(), optimizer_states, self.ema)
        p.step += 1
        p.corrupt_images += corrupt
        p.samples_seen += train.batch_size
        self.corrupt.after_step(p, unreadable)
        metrics = {
            "step": p.step,
            "loss": loss_mean,
            "flow_loss": flow_loss_mean,
            "bits_per_dim": bits_per_dim_from_loss(flow_loss_mean),
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped_steps": p.skipped_steps,
            "corrupt_images": p.corrupt_images,
        }
        if self.denoiser_optimizer is not None:
            metrics["denoiser_loss"] = den_loss_sum / train.grad_accum
            metrics["denoiser_grad_norm"] = den_norm
        return metrics

    # ----- outputs ----------------------------------------------------------------------
    def save(self) -> Path:
        path = state.save_checkpoint(
            self.out_dir,
            self.config,
            self.run_config.to_dict(),
            self.model.trainable_parameters(),
            self.ema,
            self.optimizer.state,
            self.progress,
            self.train.keep_checkpoints,
            self.data_fingerprint,
            self.denoiser_optimizer.state if self.denoiser_optimizer is not None else None,
        )
        plot_loss_curve(self.log.records(), self.out_dir / "loss.png")
        return path

    def save_samples(self) -> None:
        model = StarFlow(self.config)
        model.update(self.ema if self.ema is not None else self.model.trainable_parameters())
        conditions, rows = sample_conditions(self.config, self.dataset, self.inputs, self.train.sample_count)
        count = len(conditions) if conditions is not None else self.train.sample_count
        null = self.inputs.null_condition(count)
        pixel_space = isinstance(self.dataset, ImageFolderDataset)
        image = sample_grid(
            model,
            conditions,
            null,
            count,
            rows,
            self.train.sample_guidance,
            self.train.seed,
            pixel_space or self.train.num_frames > 0,  # clips are pixels
            self.vae,
            self.train.num_frames,
        )
        text = {"step": str(self.progress.step), "config": json.dumps(self.run_config.to_dict())}
        save_png(image, self.out_dir / "samples" / f"step_{self.progress.step:08d}.png", text)


def accumulate(total: dict | None, grads: dict | None, scale: float) -> dict | None:
    """total + scale * grads over gradient trees (total None: nothing yet; grads {}: none)."""
    if not grads:
        return total
    grads = tree_map(lambda g: g * scale, grads)
    return grads if total is None else tree_map(mx.add, total, grads)


def weights_are_finite(model: nn.Module) -> bool:
    leaves = [mx.isfinite(value).all() for _, value in tree_flatten(model.trainable_parameters())]
    return bool(mx.all(mx.stack(leaves)).item())
