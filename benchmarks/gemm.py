"""fp32 matmul speed (GFLOP/s) of MLX with its bundled BLAS, MLX with the system OpenBLAS, torch and
numpy, each in a process of its own (loading OpenBLAS process-wide changes torch; docs/blas.md).

    python benchmarks/gemm.py --sizes 1024 2048 --threads 2

Best of --repeats after one warm-up, 2 n^3 flops per (n, n) @ (n, n) product.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LIBRARIES = ("mlx bundled BLAS", "mlx + system OpenBLAS", "torch", "numpy")


def best_gflops(run, n: int, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure(library: str, sizes: list[int], repeats: int, threads: int) -> dict[int, float]:
    """Runs in the worker process: GFLOP/s per size for one library."""
    if library.startswith("mlx"):
        import starflow_mlx

        if "OpenBLAS" in library and not starflow_mlx.use_system_blas():
            raise SystemExit("no system OpenBLAS found (docs/blas.md)")
        import ctypes

        import mlx.core as mx

        status = starflow_mlx.blas_status()
        if status["loaded"]:
            ctypes.CDLL(status["library"]).openblas_set_num_threads(threads)
        arrays = {n: (mx.random.normal((n, n)), mx.random.normal((n, n))) for n in sizes}
        return {n: best_gflops(lambda a=a, b=b: mx.eval(a @ b), n, repeats) for n, (a, b) in arrays.items()}
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
        arrays = {n: (torch.randn(n, n), torch.randn(n, n)) for n in sizes}
        return {n: best_gflops(lambda a=a, b=b: a @ b, n, repeats) for n, (a, b) in arrays.items()}
    import numpy as np  # its own OpenBLAS build; threads from OPENBLAS_NUM_THREADS

    rng = np.random.default_rng(0)
    arrays = {
        n: (rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)) for n in sizes
    }
    return {n: best_gflops(lambda a=a, b=b: a @ b, n, repeats) for n, (a, b) in arrays.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.sizes, args.repeats, args.threads)))
        return
    print(f"fp32 GEMM GFLOP/s, {args.threads} thread(s), best of {args.repeats}; load {os.getloadavg()}")
    print(f"{'library':24s}" + "".join(f"{f'n = {n}':>12s}" for n in args.sizes))
    for library in LIBRARIES:
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads)}
        if library == "mlx bundled BLAS":
            environment["STARFLOW_NO_BLAS"] = "1"
        command = [sys.executable, __file__, f"--worker={library}", f"--repeats={args.repeats}"]
        command += [f"--threads={args.threads}", "--sizes", *map(str, args.sizes)]
        completed = subprocess.run(command, capture_output=True, text=True, env=environment)
        if completed.returncode != 0:
            print(f"{library:24s} failed: {completed.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{library:24s}" + "".join(f"{result[str(n)]:12.1f}" for n in args.sizes), flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
