"""`python -m lib.train` for torchrun, with a fault injected into one process (tests/test_stop_ranks.py):

    FAULT=nan:RANK:STEP      that process's loss is NaN at its STEP-th training step (counted over the run)
    FAULT=sigterm:RANK:STEP  that process sends itself SIGTERM after its STEP-th training step
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib import train as train_mod  # noqa: E402
from lib.common import run_cli  # noqa: E402

kind, rank, at_step = os.environ["FAULT"].split(":")
steps = 0
if int(os.environ["RANK"]) == int(rank):
    real_step, real_criterion = train_mod.train_step, train_mod.make_criterion

    def counted_step(*args, **kwargs):
        global steps
        steps += 1
        out = real_step(*args, **kwargs)
        if kind == "sigterm" and steps == int(at_step):
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    def poisoned_criterion(cfg):
        ce = real_criterion(cfg)

        def loss(logits, target):
            out = ce(logits, target)
            return out * float("nan") if kind == "nan" and steps == int(at_step) else out
        return loss

    train_mod.train_step, train_mod.make_criterion = counted_step, poisoned_criterion

sys.exit(run_cli(train_mod.main))
