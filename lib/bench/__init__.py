"""Speed on this machine, and a new GPU machine checked end to end.

    python -m lib.bench ...              # data pipeline, training step, epoch and inference speed (lib.bench.run)
    python -m lib.bench.gpu_check ...    # CUDA tests, eager vs compiled steps, a RobustResNet64 run (make gpu-check)

``run`` times, ``data`` / ``steps`` hold the measurements, ``timing`` the shared helpers and sizes, ``opcount`` the
aten ops a step dispatches. Nothing in lib's core imports this package.
"""
from .run import format_table, main, run_bench

__all__ = ["format_table", "main", "run_bench"]
