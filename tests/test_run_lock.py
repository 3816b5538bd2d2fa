"""One run folder, one writer: a second training on a held folder is refused; kill -9 leaves no stale lock;
SIGTERM stops like Ctrl-C (exit 143) and --resume completes the run exactly as an uninterrupted one."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lib.common import UserError, run_cli
from lib.config import make_config
from lib.guard.runlock import LOCK_FILE, hold_run_dir
from lib.train import main, train

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 4  # the signal lands after epoch 1: three more epochs of margin before the run could end by itself


def args(smoke_root, out, *extra):
    return ["--profile", "smoke", "--model", "light_resnet18", "--base-channels", "8", "--data-dir", str(smoke_root),
            "--train-size", "64", "--val-size", "20", "--batch-size", "16", "--epochs", str(EPOCHS),
            "--num-workers", "0", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def start(argv):
    # one thread in every run: the compared runs then compute bit for bit the same
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lib.train", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def history(run_dir):
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def wait_for_epoch_1(proc, run_dir, timeout=300):
    """Poll until history.csv records epoch 1: the process is then in a later epoch (or saving one)."""
    deadline = time.monotonic() + timeout
    while not history(run_dir):
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.01)


def assert_consistent(run_dir):
    """last.pt, best.pt and history.csv describe the same finished epochs."""
    rows = history(run_dir)
    last = torch.load(Path(run_dir) / "last.pt", weights_only=True)
    best = torch.load(Path(run_dir) / "best.pt", weights_only=True)
    assert last["epoch"] == len(rows) >= 1
    accs = [float(r["val_acc"]) for r in rows]
    assert best["epoch"] == accs.index(max(accs)) + 1
    return rows


@pytest.fixture(scope="module")
def straight(smoke_root, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    code, _, err = finish(start(args(smoke_root, out)))
    assert code == 0, err
    return history(out)


def test_a_held_folder_is_refused_and_left_untouched(smoke_root, tmp_path):
    run = tmp_path / "run"
    with hold_run_dir(run):
        holder = (run / LOCK_FILE).read_text()
        assert f"pid {os.getpid()}" in holder
        with pytest.raises(UserError) as err:
            train(make_config("smoke", model="light_resnet18", data_dir=str(smoke_root), out=str(run)))
        assert str(run) in str(err.value) and holder in str(err.value)
        assert os.listdir(run) == [LOCK_FILE] and (run / LOCK_FILE).read_text() == holder
    with hold_run_dir(run):  # released with the block: the next holder gets it at once
        assert f"pid {os.getpid()}" in (run / LOCK_FILE).read_text()


def test_a_start_that_fails_on_bad_data_leaves_no_run_folder(tmp_path, capsys):
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (data / name).write_bytes(b"x")  # damaged: not a pickle
    run = tmp_path / "run"
    assert run_cli(main, ["--data-dir", str(tmp_path / "data"), "--out", str(run), "--device", "cpu"]) == 2
    assert "data_batch_1: not a readable pickle" in capsys.readouterr().err
    assert not run.exists()  # neither the folder nor its lock file
    existing = tmp_path / "existing"
    existing.mkdir()
    assert run_cli(main, ["--data-dir", str(tmp_path / "data"), "--out", str(existing), "--device", "cpu"]) == 2
    assert existing.is_dir() and os.listdir(existing) == []  # a folder the user made stays, empty as it was


def test_second_process_refused_then_sigterm_then_resume(smoke_root, tmp_path, straight, capsys):
    run = tmp_path / "run"
    first = start(args(smoke_root, run))
    wait_for_epoch_1(first, run)

    code = run_cli(main, args(smoke_root, run, "--resume"))  # a second training on the same folder
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(run) in err[0] and f"pid {first.pid}" in err[0]

    first.send_signal(signal.SIGTERM)
    code, _, err = finish(first)
    assert code == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err
    rows = assert_consistent(run)
    assert len(rows) < EPOCHS, "the signal came after the run had finished: nothing was tested"

    code, _, err = finish(start(args(smoke_root, run, "--resume")))
    assert code == 0, err
    assert assert_consistent(run) == straight


def test_kill_9_leaves_no_stale_lock_and_resume_matches(smoke_root, tmp_path, straight):
    run = tmp_path / "run"
    proc = start(args(smoke_root, run))
    wait_for_epoch_1(proc, run)
    proc.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    proc.communicate(timeout=60)
    assert len(history(run)) < EPOCHS

    code, _, err = finish(start(args(smoke_root, run, "--resume")))
    assert code == 0, err
    assert assert_consistent(run) == straight
