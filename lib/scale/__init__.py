"""Beyond one process: hyper-parameter sweeps on Ray Tune (``python -m lib.scale.sweep``, ``make sweep``) and one run
across processes with torchrun (``distributed``: the global batch sharded, decisions shared, SyncBatchNorm)."""
