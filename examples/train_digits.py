"""Train the embedded demo model (class-conditional STARFlow on the scikit-learn digits).

    python examples/train_digits.py                      # writes starflow_core/assets/demo/
    python examples/train_digits.py --steps 200 --out /tmp/digits

Reproducible from --seed (data split, initialisation, batches, noise). Weights are saved
in float16 (the twins load them back as float32).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from starflow_core.digits import DIGITS_CONFIG, DigitsTraining, load_digits_split, write_demo_index
from starflow_core.sources.releases import DEMO_FOLDER  # noqa: E402
from starflow_torch.digits import train_digits


def main() -> None:
    defaults = DigitsTraining()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_FOLDER, help="pipeline folder to write")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--guidance", type=float, default=1.0, help="default guidance in model_index.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    split = load_digits_split(seed=args.seed)
    settings = DigitsTraining(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        warmup_steps=min(defaults.warmup_steps, args.steps // 10),
    )
    start = time.perf_counter()
    model, history = train_digits(split, DIGITS_CONFIG, settings)
    seconds = time.perf_counter() - start
    model.save_pretrained(args.out / "transformer", dtype=torch.float16)
    write_demo_index(args.out, guidance=args.guidance)
    log = {"seconds": seconds, "settings": settings.__dict__, "history": history}
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"trained {settings.steps} steps in {seconds / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
