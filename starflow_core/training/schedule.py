"""The framework-free bookkeeping of a run: progress counters, learning-rate schedule,
per-micro-step seeds, bits/dim, and the stop signal (SIGTERM / SIGINT)."""

from __future__ import annotations

import dataclasses
import math
import signal


@dataclasses.dataclass
class Progress:
    """The counters a resumed run continues from."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    micro_step: int = 0  # accumulation micro-steps taken: seeds the noise of the next one
    skipped_steps: int = 0  # steps whose update was dropped (non-finite loss or gradient)
    corrupt_images: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global micro-batches of `epoch` already consumed

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: object, source: str) -> Progress:
        """The counters saved in a checkpoint: an object of non-negative integers, no other keys."""
        from starflow_core.validation import FileFormatError, describe, expect

        fix = "the checkpoint is damaged"
        expect(values, "object", f"{source}: progress", fix)
        names = {f.name for f in dataclasses.fields(cls)}
        wrong = [
            f"{key}={describe(value)}"
            for key, value in values.items()
            if key not in names or not isinstance(value, int) or isinstance(value, bool) or value < 0
        ]
        if wrong:
            raise FileFormatError(f"{source}: progress counters {', '.join(wrong)} are not valid; {fix}")
        return cls(**values)


def micro_step_seed(seed: int, micro_step: int) -> int:
    """The seed of one micro-step's noise and condition dropout (63 bits).

    An odd multiplier maps distinct (seed, step) pairs to distinct seeds.
    """
    return (seed * 0x9E3779B97F4A7C15 + micro_step) % (2**63)


def learning_rate(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Official CosineLRSchedule: linear from min(min_lr, 1e-6) to max_lr, cosine down to min_lr.

    `step` counts the optimizer steps already taken.
    """
    start_lr = min(min_lr, 1e-6)
    if step <= warmup_steps and warmup_steps > 0:
        return start_lr + step / warmup_steps * (max_lr - start_lr)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def bits_per_dim_from_loss(loss: float) -> float:
    """The flow loss is the NLL per dimension minus 0.5 log(2 pi) (the Gaussian normaliser)."""
    if not math.isfinite(loss):
        return loss
    return (loss + 0.5 * math.log(2 * math.pi)) / math.log(2)


class StopSignal:
    """Records SIGTERM / SIGINT instead of dying, so the step in flight can finish and save."""

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
