"""Checks that stop a run from producing silent nonsense (framework-free, both trainers).

- Images that cannot be decoded are skipped, counted and reported on the console with
  their names; a step whose whole global batch is unreadable makes no update, and a run
  stops once more than half of the images it read were unreadable (a broken data set
  would otherwise "train" on nothing and report a made-up loss).
- Weights that an update made non-finite stop the run before they are saved.
- A resume on a different data set than the checkpoint's is refused unless allowed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starflow_core.training.files import DATA_NAME, LATEST_NAME, read_checkpoint_json
from starflow_core.training.schedule import Progress

MAX_CORRUPT_FRACTION = 0.5  # of the images read so far; more means the data set itself is broken


class TrainingStoppedError(ValueError):
    """The run cannot go on sensibly; the message says why and what was kept."""


def last_checkpoint_note(out_dir: str | Path) -> str:
    latest = Path(out_dir) / "checkpoints" / LATEST_NAME
    if latest.is_file():
        return f"the last checkpoint {latest.parent / latest.read_text().strip()} is intact"
    return "no checkpoint was written"


class CorruptImages:
    """Reports skipped images (doubling intervals, so a few bad files do not flood the console)
    and stops the run when too many of the images read are unreadable."""

    def __init__(self, dataset: Any, out_dir: str | Path):
        self.dataset = dataset
        self.out_dir = out_dir
        self.reported = 0

    def names(self, indices: Sequence[int], limit: int = 3) -> str:
        why = getattr(self.dataset, "why_unreadable", None)
        shown = [why(int(i)) if why else str(int(i)) for i in list(indices)[:limit]]
        more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
        return "; ".join(shown) + more

    def after_step(self, progress: Progress, indices: Sequence[int]) -> None:
        """Call once per step with the dataset indices of this step's unreadable images."""
        total, seen = progress.corrupt_images, progress.samples_seen
        if total > MAX_CORRUPT_FRACTION * seen:
            example = f" (e.g. {self.names(indices)})" if len(indices) else ""
            raise TrainingStoppedError(
                f"{total} of the {seen} images read so far could not be decoded{example}; "
                f"the data set looks broken, so the run stops ({last_checkpoint_note(self.out_dir)}). "
                "Fix or remove those files"
            )
        if total > 0 and total >= 2 * self.reported and len(indices):
            self.reported = total
            from tqdm import tqdm

            tqdm.write(  # above the progress bar, on a line of its own
                f"warning: skipped {len(indices)} unreadable image(s) at step {progress.step}: "
                f"{self.names(indices)} ({total} skipped so far; the run stops if more than half are)",
                file=sys.stderr,
            )


def non_finite_weights_error(
    step: int, lr: float, grad_norm: float, out_dir: str | Path
) -> TrainingStoppedError:
    return TrainingStoppedError(
        f"the update of step {step} (lr={lr:.3g}, gradient norm {grad_norm:.3g}) made some weights NaN "
        f"or infinite; they were not saved ({last_checkpoint_note(out_dir)}). Lower train.lr or set "
        "train.grad_clip"
    )


def check_resume_data(folder: Path, data: dict[str, Any], allow_change: bool) -> None:
    """Refuse resuming checkpoint `folder` on a data set other than the one it was trained on."""
    path = folder / DATA_NAME
    if allow_change or not path.is_file():  # checkpoints of older versions carry no fingerprint
        return
    saved = read_checkpoint_json(folder, DATA_NAME)
    if saved.get("digest") == data.get("digest"):
        return  # the same files (the folder may have moved)
    raise ValueError(
        f"cannot resume from {folder} exactly: it was trained on {saved.get('folder')} "
        f"({saved.get('count')} samples) but train.data is now {data.get('folder')} "
        f"({data.get('count')} samples, not the same files); resume on the same data, or pass "
        "--allow-data-change to continue on the new data"
    )
