"""--compile on the CPU (inductor): the compiled step trains as the eager one, and compiles once.

Tolerance: inductor fuses batch norm and the ReLUs into generated C++ loops that sum in another order than eager's
kernels, so float32 weights drift apart in the last digits with each SGD step. Measured on this test's settings
(8 steps over 2 epochs, CPU, torch 2.14.1): train losses equal to all printed digits, val losses within 1e-7
relative. Asserted: within 1e-4 relative, accuracies within one image.

Marked `compile`: a cold inductor cache took 44 s of C++ compilation here (2 cores), so the default run
(pytest.ini) leaves it out; `pytest -m compile` runs it.
"""
import os
import shutil

import pytest
import torch

from lib.config import make_config
from lib.train import train

CXX = os.environ.get("CXX", "g++")
pytestmark = [pytest.mark.compile,
              pytest.mark.skipif(not (shutil.which(CXX) or shutil.which("c++") or shutil.which("clang++")),
                                 reason="inductor's CPU backend compiles C++: no C++ compiler found")]


def test_compiled_training_matches_eager_and_never_recompiles(smoke_root, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    # the smallest robust_resnet64 (1 block a group, width 8): compile time grows with the layers;
    # no dropout or stochastic depth, whose random draws differ between eager and inductor
    settings = dict(model="robust_resnet64", blocks_per_group=1, base_channels=8, dropout=0.0,
                    stochastic_depth_rate=0.0, augment="crop,flip", mix_prob=1.0, loader="device", batch_size=16,
                    train_size=64, val_size=40, epochs=2, data_dir=str(smoke_root), device="cpu", progress=False)
    eager = train(make_config("smoke", out=str(tmp_path / "eager"), **settings))["history"]

    torch._dynamo.reset()
    counters.clear()
    compiled_after = []

    def after_epoch(row):  # what dynamo compiled by the end of each epoch (training and its evaluation)
        compiled_after.append((counters["frames"]["total"], counters["stats"]["unique_graphs"],
                               counters["aot_autograd"]["total"]))
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # from here on a recompile raises

    compiled = train(make_config("smoke", out=str(tmp_path / "compiled"), compile=True, **settings),
                     on_epoch=after_epoch)["history"]
    # one frame, one graph without breaks, its forward and backward compiled: and nothing more in epoch 2,
    # after the switch to evaluation (eval() on the model) and back
    assert compiled_after == [(1, 1, 1), (1, 1, 1)]
    assert counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] == 2
    for e, c in zip(eager, compiled):
        for key in ("train_loss", "val_loss"):
            assert c[key] == pytest.approx(e[key], rel=1e-4), (key, e, c)
        assert abs(c["val_acc"] - e["val_acc"]) <= 1 / 40 + 1e-9
