"""torchrun: every reason to stop (--time-limit, a non-finite loss, SIGTERM) stops all ranks after the same step.

2 gloo processes on the CPU, smoke data, light_resnet18 at width 8, 80 training images in global batches of 20
(4 steps an epoch, each rank 10 images a step). `--tee 3` prefixes each line of rank r with "[default<r>]:", so
each rank's own log is read from the one output. A fault in one process only comes from tests/torchrun_train.py.
"""
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 30


def torchrun(out, smoke_root, *extra, port, fault=None):
    script = [str(REPO / "tests" / "torchrun_train.py")] if fault else ["-m", "lib.train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "--tee", "3", *script, "--profile", "smoke", "--model", "light_resnet18",
           "--base-channels", "8", "--data-dir", str(smoke_root), "--train-size", "80", "--val-size", "40",
           "--batch-size", "20", "--epochs", str(EPOCHS), "--device", "cpu", "--no-progress", "--out", str(out),
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **({"FAULT": fault} if fault else {})}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=180)  # a rank left waiting in a collective would hang here until the timeout
    return proc.returncode, proc.stdout, time.monotonic() - started


def rank_lines(output, rank):
    prefix = f"[default{rank}]:"
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def history_epochs(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_time_limit_stops_every_rank_after_the_same_epoch(smoke_root, tmp_path, free_port):
    run = tmp_path / "run"
    code, output, seconds = torchrun(run, smoke_root, "--time-limit", "0.1", port=free_port())  # 6 s of training
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "Error" not in output, output[-3000:]
    epochs = history_epochs(run)
    done = len(epochs)
    assert epochs == list(range(1, done + 1)) and 1 <= done < EPOCHS, output[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == done
    stopped = {rank: [m.group(1) for line in rank_lines(output, rank)
                      if (m := re.search(r"stopped after epoch (\d+) of 30 \(--time-limit", line))]
               for rank in (0, 1)}
    assert stopped == {0: [str(done)], 1: [str(done)]}, output[-3000:]
    assert seconds < 120


def test_non_finite_loss_in_one_process_stops_both(smoke_root, tmp_path, free_port):
    """Rank 1's loss is NaN at the last step of epoch 2, where the loss is checked: rank 0's own loss there is
    still finite (the NaN reaches its weights only through that step's gradients)."""
    run = tmp_path / "run"
    code, output, _ = torchrun(run, smoke_root, port=free_port(), fault="nan:1:8")
    assert code != 0
    errors = {rank: [line for line in rank_lines(output, rank) if line.startswith("error:")] for rank in (0, 1)}
    assert errors[1] == [f"error: loss became nan at epoch 2, step 4; stopped. Last good checkpoint: "
                         f"{run / 'last.pt'}. Try a lower --lr."], output[-3000:]
    assert errors[0] == [errors[1][0].replace("loss became nan", "loss became non-finite in process 1")]
    assert not any("Traceback" in line for rank in (0, 1) for line in rank_lines(output, rank)), output[-3000:]
    assert history_epochs(run) == [1]  # epoch 2 never reached the run folder
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                      if v.is_floating_point())


def test_sigterm_to_one_process_stops_both_at_the_same_step(smoke_root, tmp_path, free_port):
    """Rank 1 alone gets SIGTERM at step 2 of epoch 2; both ranks abandon epoch 2 at its next check (its last
    step) and exit with SIGTERM's code; the run folder keeps epoch 1 and continues with --resume."""
    run = tmp_path / "run"
    code, output, _ = torchrun(run, smoke_root, port=free_port(), fault="sigterm:1:6")
    assert code != 0
    for rank in (0, 1):
        lines = rank_lines(output, rank)
        assert any(line.startswith("terminated (SIGTERM) during epoch 2/30: it is abandoned") for line in lines), \
            output[-3000:]
        assert not any("Traceback" in line for line in lines), output[-3000:]
    assert re.search(r"exitcode\s*:\s*143", output), output[-3000:]  # torchrun's report of the processes' code
    continue_lines = [line for rank in (0, 1) for line in rank_lines(output, rank) if "continue with:" in line]
    assert len(continue_lines) == 1 and "continue with: torchrun --nproc_per_node 2 -m lib.train" in \
        continue_lines[0] and continue_lines[0].endswith("--resume"), output[-3000:]
    assert history_epochs(run) == [1]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    code, output, _ = torchrun(run, smoke_root, "--resume", "--stop-after-epochs", "2", port=free_port())
    assert code == 0, output[-3000:]
    assert history_epochs(run) == [1, 2]
