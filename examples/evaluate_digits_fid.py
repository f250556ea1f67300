"""FID-style evaluation of the digits demo, offline, with the digit stand-in features.

    python examples/evaluate_digits_fid.py                  # -> outputs/digits_fid/ (sets), docs/digits_fid.{json,png}
    python examples/evaluate_digits_fid.py --count 100 --out outputs/digits_fid_small
    python examples/evaluate_digits_fid.py --sweep 0 0.25 0.5 1 2     # + docs/digits_fid_guidance.{json,png}

Runs the installed commands as a user would, each in its own process: `sample-eval` makes the
sample sets (the torch twin at guidance 0 and at the model's default, the MLX twin at the
default; the same seeds), `starflow-eval --features digits` measures every set against the real
training digits: real held-out digits, the samples, and Gaussian noise. Every set has the same
number of images (FID grows as sets shrink). Prints samples per second per twin.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from starflow_core.digits import load_digits_split
from starflow_core.generation.images import to_uint8

SPEED = re.compile(r"(\d+) samples in ([\d.]+) s")


def command(module: str, *args: str) -> str:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"{module} {' '.join(args)}: {time.perf_counter() - started:.0f} s", flush=True)
    return done.stdout


def write_real_sets(folder: Path, count: int, seed: int) -> dict[str, Path]:
    split = load_digits_split(seed=0)  # the demo's split: it was trained on train_images
    rng = np.random.default_rng(seed)
    held_out = rng.permutation(len(split.test_images))[:count]
    noise = np.clip(0.5 * rng.standard_normal((count, 8, 8, 1)), -1.0, 1.0).astype(np.float32)
    sets = {
        "reference (real training digits)": (split.train_images, split.train_labels),
        "real held-out digits": (split.test_images[held_out], split.test_labels[held_out]),
        "Gaussian noise": (noise[..., 0], np.zeros(count, np.int64)),
    }
    paths = {}
    for name, (images, labels) in sets.items():
        path = folder / (name.split(" ")[0].replace("-", "_") + ".npz")
        np.savez(path, arr_0=to_uint8(images[..., None]), arr_1=labels)
        paths[name] = path
    return paths


def sample_set(twin: str, folder: Path, count: int, guidance: float | None) -> tuple[Path, float]:
    args = ["-n", str(count), "--shard-size", "100", "--batch-size", "40", "--quiet", "-o", str(folder)]
    args += [] if guidance is None else ["--cfg", str(guidance)]
    out = command(f"starflow_{twin}.sample_eval", *args)
    made = SPEED.search(out)
    return folder, (int(made[1]) / float(made[2])) if made and int(made[1]) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=360, help="images per set (the held-out split has 360)")
    parser.add_argument("--out", type=Path, default=Path("outputs/digits_fid"))
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/digits_fid"), help="writes DOCS.json, DOCS.png"
    )
    parser.add_argument(
        "--sweep", type=float, nargs="*", help="also FID against guidance (torch): DOCS_guidance.*"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    real = write_real_sets(args.out, args.count, seed=0)
    reference = real.pop("reference (real training digits)")
    speeds = {}
    sets = {"real held-out digits": real["real held-out digits"]}
    sets["demo, guidance 1 (default), torch"], speeds["torch"] = sample_set(
        "torch", args.out / "torch_default", args.count, None
    )
    sets["demo, guidance 1 (default), MLX"], speeds["mlx"] = sample_set(
        "mlx", args.out / "mlx_default", args.count, None
    )
    sets["demo, guidance 0, torch"], _ = sample_set("torch", args.out / "torch_guidance0", args.count, 0.0)
    sets["Gaussian noise"] = real["Gaussian noise"]
    results = {}
    for name, path in sets.items():
        out = command(
            "starflow_torch.eval",
            str(path),
            "--reference",
            str(reference),
            "--features",
            "digits",
            "--json",
            "--quiet",
        )
        results[name] = json.loads(out)
        print(
            f"  {name}: FID {results[name]['fid']:.3f}, precision {results[name]['precision']:.3f}, recall {results[name]['recall']:.3f}"
        )
    report = {
        "count_per_set": args.count,
        "reference": "the 1,437 real training digits (the demo's training split)",
        "features": "digits (starflow_core/assets/digit_features)",
        "samples_per_second": speeds,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()},
        "sets": {
            name: {k: r[k] for k in ("fid", "inception_score", "precision", "recall")}
            for name, r in results.items()
        },
    }
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.docs.with_suffix(".png"))
    print(f"samples/s: {speeds}; wrote {args.docs.with_suffix('.json')} and .png")
    if args.sweep:
        guidance_sweep(args, reference)


def guidance_sweep(args: argparse.Namespace, reference: Path) -> None:
    """FID, precision and recall against the guidance weight; sets already made are reused
    (sample-eval resumes a complete set instantly)."""
    rows = []
    for guidance in args.sweep:
        name = {0.0: "torch_guidance0", 1.0: "torch_default"}.get(guidance, f"torch_guidance{guidance:g}")
        folder, _ = sample_set("torch", args.out / name, args.count, guidance)
        out = command(
            "starflow_torch.eval",
            str(folder),
            "--reference",
            str(reference),
            "--features",
            "digits",
            "--json",
            "--quiet",
        )
        result = json.loads(out)
        rows.append(
            {
                "guidance": guidance,
                **{k: result[k] for k in ("fid", "inception_score", "precision", "recall")},
            }
        )
        print(
            f"  guidance {guidance:g}: FID {result['fid']:.3f}, precision {result['precision']:.3f}, recall {result['recall']:.3f}"
        )
    path = args.docs.with_name(args.docs.name + "_guidance")
    path.with_suffix(".json").write_text(
        json.dumps({"count_per_set": args.count, "rows": rows}, indent=2) + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = [r["guidance"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(weights, [r["fid"] for r in rows], "o-")
    left.set_xlabel("guidance weight")
    left.set_ylabel("FID (digit features)")
    right.plot(weights, [r["precision"] for r in rows], "o-", label="precision")
    right.plot(weights, [r["recall"] for r in rows], "o-", label="recall")
    right.set_xlabel("guidance weight")
    right.set_ylim(0, 1)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(f"Digits demo: guidance trades recall for precision ({args.count} samples per point)")
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"), dpi=110)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["sets"])
    values = report["sets"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.barh(names, [values[n]["fid"] for n in names], color="tab:blue")
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_xlabel("FID with digit features (log scale, lower is better)")
    for row, name in enumerate(names):
        left.text(values[name]["fid"], row, f" {values[name]['fid']:.2f}", va="center")
    width = 0.4
    rows = np.arange(len(names))
    right.barh(rows - width / 2, [values[n]["precision"] for n in names], width, label="precision")
    right.barh(rows + width / 2, [values[n]["recall"] for n in names], width, label="recall")
    right.set_yticks(rows, [""] * len(names))
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.legend(loc="lower right")
    right.set_xlabel("k-NN precision / recall (k = 3)")
    figure.suptitle(f"Digits demo vs the real training digits, {report['count_per_set']} images per set")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
