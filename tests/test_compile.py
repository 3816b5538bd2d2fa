"""--compile on the CPU (inductor): the compiled step trains as the eager one, with dropout and stochastic depth on,
compiles once, and --time-limit does not extrapolate the compilation.

Random ops: inductor draws its own random numbers by default (Philox in its generated code), so a compiled run
with dropout and stochastic depth would not draw what eager draws; `torch._inductor.config.fallback_random` makes
it call eager's random ops in the graph's order, so the two runs draw the same masks and coins from the same
generator and can be compared.

Tolerance: inductor fuses batch norm and the ReLUs into generated C++ loops that sum in another order than eager's
kernels, so float32 weights drift apart in the last digits with each SGD step. Measured on this test's settings
(8 steps over 2 epochs, CPU, torch 2.14.1, dropout and stochastic depth off): train losses equal to all printed
digits, val losses within 1e-7 relative. Asserted: within 1e-4 relative, accuracies within one image.

Marked `compile`: a cold inductor cache took 44 s of C++ compilation here (2 cores), so the default run
(pytest.ini) leaves it out; `pytest -m compile` runs it.
"""
import os
import shutil

import pytest
import torch

import lib.guard.stopping as stopping
from lib.config import make_config
from lib.train import train

CXX = os.environ.get("CXX", "g++")
pytestmark = [pytest.mark.compile,
              pytest.mark.skipif(not (shutil.which(CXX) or shutil.which("c++") or shutil.which("clang++")),
                                 reason="inductor's CPU backend compiles C++: no C++ compiler found")]


def test_compiled_training_matches_eager_and_never_recompiles(smoke_root, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    # the smallest robust_resnet64 (1 block a group, width 8): compile time grows with the layers; dropout and
    # a high stochastic-depth rate, so that coins fall both ways within the 8 steps
    settings = dict(model="robust_resnet64", blocks_per_group=1, base_channels=8, dropout=0.2,
                    stochastic_depth_rate=0.5, augment="crop,flip", mix_prob=1.0, loader="device", batch_size=16,
                    train_size=64, val_size=40, epochs=2, data_dir=str(smoke_root), device="cpu", progress=False)
    eager = train(make_config("smoke", out=str(tmp_path / "eager"), **settings))["history"]
    plain = train(make_config("smoke", out=str(tmp_path / "plain"),
                              **{**settings, "dropout": 0.0, "stochastic_depth_rate": 0.0}))["history"]
    # the random ops act: without them the losses move by far more than the 1e-4 asserted below
    assert max(abs(p["train_loss"] / e["train_loss"] - 1) for p, e in zip(plain, eager)) > 1e-3

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    compiled_after, predictions = [], []

    def after_epoch(row):  # what dynamo compiled by the end of each epoch (training and its evaluation)
        compiled_after.append((counters["frames"]["total"], counters["stats"]["unique_graphs"],
                               counters["aot_autograd"]["total"]))
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # from here on a recompile raises

    real_out_of_time = stopping.out_of_time

    def out_of_time(limit_minutes, elapsed, next_epoch_seconds):  # --time-limit's prediction, recorded
        predictions.append(next_epoch_seconds)
        return real_out_of_time(limit_minutes, elapsed, next_epoch_seconds)

    monkeypatch.setattr(stopping, "out_of_time", out_of_time)
    compiled = train(make_config("smoke", out=str(tmp_path / "compiled"), compile=True, time_limit=60.0,
                                 **settings), on_epoch=after_epoch)["history"]
    # one frame, one graph without breaks, its forward and backward compiled: and nothing more in epoch 2,
    # after the switch to evaluation (eval() on the model) and back
    assert compiled_after == [(1, 1, 1), (1, 1, 1)]
    assert counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] == 2
    assert not counters["graph_break"]
    for e, c in zip(eager, compiled):
        for key in ("train_loss", "val_loss"):
            assert c[key] == pytest.approx(e[key], rel=1e-4), (key, e, c)
        assert abs(c["val_acc"] - e["val_acc"]) <= 1 / 40 + 1e-9

    # --time-limit before epoch 2: epoch 1 took the compilation (seconds), the prediction is epoch 2's size
    # (a tenth of a second here), not epoch 1's
    [predicted] = predictions
    first, second = compiled[0]["epoch_seconds"], compiled[1]["epoch_seconds"]
    assert 0 < predicted < first / 4 and predicted < 4 * second + 0.5, (predicted, first, second)


def test_sync_batch_norm_compiles_to_one_graph(tmp_path):
    """--sync-bn under --compile: SyncBatchNorm2d's all-reduce is traced into the graph (no graph break per
    layer, as nn.SyncBatchNorm's boolean mask causes), and the compiled layer computes BatchNorm2d of the whole
    batch (2 gloo processes)."""
    from test_distributed import run_sync_bn

    ranks = run_sync_bn(tmp_path, (6, 6), compiled=True)
    assert [(r["graphs"], r["graph_breaks"]) for r in ranks] == [(1, 0), (1, 0)]
