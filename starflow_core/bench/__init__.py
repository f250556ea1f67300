"""Framework-free pieces of the sampling benchmark, shared by both twins' `bench` commands and
the driver that runs them side by side (benchmarks/sampling.py).

    settings.py   what a run measures: settings, the shared command-line options, inputs
    weights.py    random weights in our folder format, built with numpy (the same in both twins)
    measure.py    timing, the cost model (FLOPs, weight traffic), one row per sampling mode
    report.py     ratios, the printed table, bench.json and bench.png

Each twin times itself in a process of its own: loading OpenBLAS for MLX changes torch's
results and speed in the same process (docs/blas.md).
"""
