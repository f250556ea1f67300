"""The training loop: one function, `train(run)`, for one process, DDP or FSDP2 under torchrun.

A step accumulates `grad_accum` micro-batches, clips the gradient, and applies AdamW
unless the loss or gradient norm is not finite (then the update is skipped and
counted). SIGTERM / SIGINT finish the current step, save a checkpoint and return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from starflow_core.io import read_safetensors_header
from starflow_core.training.config import RunConfig
from starflow_core.training.evaluation import is_due
from starflow_core.training.files import reading_checkpoint
from starflow_core.training.guards import CorruptImages, check_resume_data, non_finite_weights_error
from starflow_core.training.run_folder import claim_run_folder
from starflow_core.training.schedule import StopSignal, ema_decay_at
from starflow_core.training.video_objective import (
    DENOISER_BETAS,
    DENOISER_WEIGHT_DECAY,
    is_denoiser_parameter,
    loss_weight,
)

from ..data import ImageFolderDataset
from ..model import StarFlow
from . import parallel, state
from .evaluation import HeldOutEvaluation
from .inputs import InputBuilder, batch_stream, build_dataset, sample_conditions
from .objective import TrainingObjective, bits_per_dim_from_loss, learning_rate
from .progress import JsonlLog, plot_loss_curve, sample_grid, save_png


@dataclass
class TrainResult:
    progress: state.Progress
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

    The main process locks the run folder for the run (a second trainer on it is refused),
    and a fresh run is refused in a folder that already holds one
    (starflow_core.training.run_folder).
    """
    info = parallel.init_processes()
    try:
        if info.is_main:
            claim = claim_run_folder(run.train.out_dir, resume, state.resolve_checkpoint)
        else:
            claim = contextlib.nullcontext(state.resolve_checkpoint(resume) if resume is not None else None)
        with StopSignal() as stop, claim as resume_dir:
            return Trainer(run, info, resume_dir, allow_data_change).run(stop, stop_at_step)
    finally:
        parallel.close_processes(info)


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        info: parallel.ProcessInfo,
        resume: str | Path | None,
        allow_data_change: bool = False,
    ):
        self.run_config, self.config, self.train = run, run.model, run.train
        self.info = info
        self.out_dir = Path(self.train.out_dir)
        self.progress = state.Progress()
        resume_dir = state.resolve_checkpoint(resume) if resume is not None else None
        if resume_dir is not None:
            state.check_resume_compatible(resume_dir, self.config, self.train.to_dict())

        text_encoder = self._load_component("text", self.train.text_encoder)
        self.dataset = build_dataset(self.config, self.train)
        self.data_fingerprint = self.dataset.fingerprint()
        if resume_dir is not None:
            check_resume_data(resume_dir, self.data_fingerprint, allow_data_change)
        self.corrupt = CorruptImages(self.dataset, self.out_dir)
        self.inputs = InputBuilder(self.config, self.train, self.dataset, info.device, text_encoder)

        model = self._initial_model(resume_dir)
        if self.train.gradient_checkpointing:
            parallel.enable_gradient_checkpointing(model)
        weight = loss_weight(self.train, self.inputs.noise_std)
        objective = TrainingObjective(model, self.train.latent_norm_reg, self.inputs.noise_std, weight)
        self.objective = parallel.wrap(objective, self.train.parallel, info, self.train.bf16)
        self.optimizer = torch.optim.AdamW(
            self.flow_parameters(),
            lr=self.train.lr,
            betas=self.train.betas,
            weight_decay=self.train.weight_decay,
        )
        self.denoiser_optimizer = None
        if self.config.learnable_self_denoiser:  # official: its own AdamW
            self.denoiser_optimizer = torch.optim.AdamW(
                self.denoiser_parameters(),
                lr=self.train.denoiser_lr,
                betas=DENOISER_BETAS,
                weight_decay=DENOISER_WEIGHT_DECAY,
            )
        self.ema = None
        if self.train.ema_decay > 0:
            self.ema = parallel.EMA(parallel.model_parameters(self.objective), self.train.ema_decay)
        if resume_dir is not None:
            self._restore(resume_dir)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if info.device.type == "cuda" and self.train.bf16
            else contextlib.nullcontext()
        )
        self.log = None  # written by the main process only
        if info.is_main:
            self.log = JsonlLog(self.out_dir / "log.jsonl", self.progress.step if resume_dir else None)
        self.vae = self._load_component("vae", self.train.vae) if info.is_main else None
        self.evaluation = None  # the main process evaluates
        if info.is_main:
            pixel_space = isinstance(self.dataset, ImageFolderDataset)
            resume_step = self.progress.step if resume_dir else None
            self.evaluation = HeldOutEvaluation.create(
                run, self.out_dir, text_encoder, self.vae, pixel_space, resume_step, info.device
            )

    # ----- setup ------------------------------------------------------------------------
    def flow_parameters(self) -> list[torch.nn.Parameter]:
        """What the flow's optimizer updates: every parameter but the learned self-denoiser's."""
        named = parallel.model_parameters(self.objective).items()
        return [p for name, p in named if not is_denoiser_parameter(name)]

    def denoiser_parameters(self) -> list[torch.nn.Parameter]:
        named = parallel.model_parameters(self.objective).items()
        return [p for name, p in named if is_denoiser_parameter(name)]

    def _initial_model(self, resume_dir: Path | None) -> StarFlow:
        if resume_dir is not None:
            with reading_checkpoint(resume_dir):
                return StarFlow.from_pretrained(resume_dir).train()
        if self.train.init_weights:
            model = StarFlow.from_pretrained(self.train.init_weights)
            if model.config != self.config:
                raise ValueError(
                    f"train.init_weights={self.train.init_weights} holds a different model config"
                )
            return model.train()
        torch.manual_seed(self.train.seed)  # the same initial weights on every process
        return StarFlow(self.config).train()

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
            saved = state.load_training_state(folder)
            self.progress = state.Progress(**saved["progress"])
            set_optimizer_state_dict(
                self.objective,
                self.optimizer,
                optim_state_dict=saved["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
            if self.denoiser_optimizer is not None:
                set_optimizer_state_dict(
                    self.objective,
                    self.denoiser_optimizer,
                    optim_state_dict=saved["denoiser_optimizer"],
                    options=StateDictOptions(full_state_dict=True),
                )
            if self.ema is not None:
                from safetensors.torch import load_file

                read_safetensors_header(folder / "ema" / "model.safetensors")  # truncated: a clear error
                self.ema.load_full_state(load_file(str(folder / "ema" / "model.safetensors")))
        rng = saved["rng"]
        state.set_rng_state(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])

    # ----- the loop ---------------------------------------------------------------------
    def run(self, stop: StopSignal, stop_at_step: int | None) -> TrainResult:
        result = TrainResult(self.progress)
        p = self.progress
        stream = batch_stream(
            self.dataset, self.train, p.epoch, p.batch_in_epoch, self.info.rank, self.info.world_size
        )
        bar = self._progress_bar()
        try:
            self._loop(stream, stop, stop_at_step, result, bar)
        finally:
            if bar is not None:
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
            before = dataclasses.replace(p)
            try:
                metrics = self.step(stream)
            except RuntimeError:
                # a DataLoader worker killed by a signal sent to the whole process group (when
                # it arrived before the workers ignored it): the step is abandoned, not lost
                # work; the state before it is saved below like any stop
                if not (stop.received and not self.info.distributed):
                    raise
                p.__dict__.update(before.__dict__)
                self.optimizer.zero_grad(set_to_none=True)
                print(
                    f"note: a DataLoader worker died after the stop signal; the unfinished step was "
                    f"dropped and step {p.step} is saved",
                    file=sys.stderr,
                )
                result.checkpoint, result.interrupted, result.signalled = self.save(), True, True
                break
            result.losses.append(metrics["loss"])
            signalled = self._agree(stop.received)
            stopping = signalled or p.step == stop_at_step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", skipped=p.skipped_steps)
            if p.step % self.train.log_every == 0 or p.step == self.train.steps:
                now = time.perf_counter()
                metrics["samples_per_s"] = (p.samples_seen - last_log_samples) / max(
                    now - last_log_time, 1e-9
                )
                last_log_time, last_log_samples = now, p.samples_seen
                if self.info.is_main:
                    self.log.write(metrics)
            if self.train.sample_every and p.step % self.train.sample_every == 0:
                self.save_samples()
            if is_due(self.train, p.step):  # held-out bits/dim and FID, on the weights samples use
                self.evaluate()
            if p.step % self.train.save_every == 0 or p.step == self.train.steps or stopping:
                result.checkpoint = self.save()
            if stopping:
                result.interrupted, result.signalled = True, signalled
                break

    def _progress_bar(self):
        if not self.info.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=self.train.steps, initial=self.progress.step, desc="train", dynamic_ncols=True)

    def _agree(self, flag: bool) -> bool:
        """Whether any process got a stop signal (all processes must stop at the same step)."""
        return bool(parallel.all_reduce_sum(torch.tensor([float(flag)]), self.info)[0] > 0)

    def step(self, stream) -> dict:
        p, train = self.progress, self.train
        lr = learning_rate(p.step, train.lr, train.min_lr, train.warmup_steps, train.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if self.denoiser_optimizer is not None:
            den_lr = learning_rate(
                p.step, train.denoiser_lr, train.denoiser_min_lr, train.warmup_steps, train.steps
            )
            for group in self.denoiser_optimizer.param_groups:
                group["lr"] = den_lr
            self.denoiser_optimizer.zero_grad(set_to_none=True)
        loss_sum, flow_loss_sum, den_loss_sum, corrupt, valid, unreadable = 0.0, 0.0, 0.0, 0, 0.0, []
        for micro in range(train.grad_accum):
            p.epoch, p.batch_in_epoch, batch = next(stream)
            corrupt += batch["corrupt"]
            unreadable += batch["corrupt_index"]
            inputs = self.inputs(batch, p.micro_step)
            valid += inputs.weight
            p.micro_step += 1
            with parallel.gradient_sync(self.objective, micro == train.grad_accum - 1), self.autocast:
                loss, flow_loss, den_loss = self.objective(inputs.x, inputs.y)
                # the two losses reach disjoint parameters: one backward gives each its gradient
                ((loss + den_loss) * (inputs.weight / train.grad_accum)).backward()
            loss_sum += loss.item() * inputs.weight
            flow_loss_sum += flow_loss.item() * inputs.weight
            den_loss_sum += den_loss.item() * inputs.weight
        grad_norm = self._clip(self.flow_parameters())
        den_norm = self._clip(self.denoiser_parameters()) if self.denoiser_optimizer is not None else 0.0
        non_finite = float(not (math.isfinite(loss_sum) and math.isfinite(den_loss_sum)))
        values = [loss_sum, flow_loss_sum, non_finite, float(corrupt), valid, den_loss_sum]
        totals = parallel.all_reduce_sum(torch.tensor(values, dtype=torch.float64), self.info)
        steps_summed = train.grad_accum * self.info.world_size
        loss_mean, flow_loss_mean = (float(t) / steps_summed for t in totals[:2])
        if totals[2] > 0 or not (math.isfinite(grad_norm) and math.isfinite(den_norm)) or totals[4] == 0:
            # the NaN/inf guard, or no readable image in the global batch: no update from this step
            self.optimizer.zero_grad(set_to_none=True)
            if self.denoiser_optimizer is not None:
                self.denoiser_optimizer.zero_grad(set_to_none=True)
            p.skipped_steps += 1
        else:
            self.optimizer.step()
            if self.denoiser_optimizer is not None:
                self.denoiser_optimizer.step()
            if not self._weights_are_finite():  # checked before the EMA or a checkpoint sees them
                raise non_finite_weights_error(p.step + 1, lr, grad_norm, self.out_dir)
            if self.ema is not None:
                self.ema.update(ema_decay_at(train.ema_decay, p.step, train.ema_warmup))
        p.step += 1
        p.corrupt_images += int(totals[3])
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
            metrics["denoiser_loss"] = float(totals[5]) / steps_summed
            metrics["denoiser_grad_norm"] = den_norm
        return metrics

    def _clip(self, params: list[torch.nn.Parameter]) -> float:
        """Clip the gradient of `params` to train.grad_clip (0: not clipped); its norm before."""
        clip = self.train.grad_clip if self.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        return float(parallel.full_tensor(norm)) if hasattr(norm, "full_tensor") else float(norm)

    def _weights_are_finite(self) -> bool:
        """Every process's parameters (its shards under FSDP) are finite."""
        params = [p.detach() for p in parallel.model_parameters(self.objective).values()]
        local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
        bad = sum(float(not torch.isfinite(t).all()) for t in local)
        return parallel.all_reduce_sum(torch.tensor([bad], dtype=torch.float64), self.info)[0] == 0

    # ----- outputs ----------------------------------------------------------------------
    def _full_states(self) -> tuple[dict, dict | None]:
        """Full model and EMA state_dicts on CPU (collectives: every process calls this)."""
        model_state = parallel.full_model_state(self.objective)
        if self.ema is None:
            return model_state, None
        buffers = dict(parallel.unwrapped(self.objective).model.named_buffers())
        return model_state, self.ema.full_state(buffers)

    def save(self) -> Path | None:
        model_state, ema_state = self._full_states()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optimizer_state = get_optimizer_state_dict(self.objective, self.optimizer, options=options)
        den_state = None
        if self.denoiser_optimizer is not None:
            den_state = get_optimizer_state_dict(self.objective, self.denoiser_optimizer, options=options)
        rng = [state.rng_state()]
        if self.info.distributed:
            rng = [None] * self.info.world_size
            torch.distributed.all_gather_object(rng, state.rng_state())
        path = None
        if self.info.is_main:
            training_state = {
                "format": state.STATE_FORMAT,
                "progress": self.progress.to_dict(),
                "optimizer": optimizer_state,
                "scheduler": {"kind": "warmup_cosine", "step": self.progress.step},
                "rng": rng,
                "world_size": self.info.world_size,
            }
            if den_state is not None:
                training_state["denoiser_optimizer"] = den_state
            path = state.save_checkpoint(
                self.out_dir,
                self.config,
                self.run_config.to_dict(),
                model_state,
                ema_state,
                training_state,
                self.train.keep_checkpoints,
                self.data_fingerprint,
            )
            plot_loss_curve(self.log.records(), self.out_dir / "loss.png")
        if self.info.distributed:
            torch.distributed.barrier()
        return path

    def evaluate(self) -> None:
        model_state, ema_state = self._full_states()  # collectives: every process calls this
        if self.info.is_main:
            self.evaluation(ema_state or model_state, self.progress.step, self.log.records())

    def save_samples(self) -> None:
        model_state, ema_state = self._full_states()
        if not self.info.is_main:
            return
        with torch.device("meta"):
            model = StarFlow(self.config)
        model.load_state_dict(ema_state or model_state, assign=True)
        model.to(self.info.device).eval()
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
