"""lib.scale.sweep on a local Ray: grid, random search, ASHA, an interrupted sweep continued with --resume.

Ray's start-up costs seconds (it launches a GCS, a raylet and Python agents), so the whole module shares one
local Ray session; the interrupted sweep runs in a child process that joins it with --address.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ray  # noqa: F401 - tests/requirements.txt installs ray[tune]; lib.scale.sweep imports it lazily

from lib.scale import sweep

REPO = Path(__file__).resolve().parents[1]
# --max-concurrent 1 in the tests: one trial worker, reused from trial to trial, instead of two starting (each
# imports torch: seconds on a 2-core machine) -- the trials are tiny, so parallel trials would not win that back.
TINY = ["--profile", "smoke", "--model", "light_resnet18", "--train-size", "40", "--val-size", "20",
        "--batch-size", "20", "--augment", "none", "--mix-prob", "0", "--cpus-per-trial", "1"]


@pytest.fixture(scope="module")
def ray_address(smoke_root):
    sweep.start_ray(None, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(args):
    return sweep.main([*TINY, *args])


def test_grid_2x2_gives_four_runs_matching_their_history(ray_address, smoke_root, tmp_path):
    out = tmp_path / "grid"
    assert run(["--data-dir", str(smoke_root), "--epochs", "2", "--param", "dropout=0.0,0.1",
                "--param", "lr=0.05,0.1", "--max-concurrent", "1", "--out", str(out)]) == 0
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 4
    combos = set()
    for row in rows:
        run_dir = out / row["run_dir"]
        config = json.loads((run_dir / "config.json").read_text())
        history = read_csv(run_dir / "history.csv")
        assert (config["dropout"], config["lr"]) == (float(row["dropout"]), float(row["lr"]))
        combos.add((config["dropout"], config["lr"]))
        assert row["status"] == "finished"
        assert int(row["epochs_done"]) == len(history) == 2
        assert float(row["final_val_acc"]) == pytest.approx(float(history[-1]["val_acc"]))
        assert float(row["best_val_acc"]) == pytest.approx(max(float(h["val_acc"]) for h in history))
        assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()
    assert combos == {(0.0, 0.05), (0.1, 0.05), (0.0, 0.1), (0.1, 0.1)}


def test_random_search_runs_the_requested_samples(ray_address, smoke_root, tmp_path):
    out = tmp_path / "random"
    assert run(["--data-dir", str(smoke_root), "--epochs", "1", "--param", "dropout=0.0,0.1,0.2",
                "--param", "kernel_size=3,5", "--search", "random", "--samples", "3", "--max-concurrent", "1",
                "--out", str(out)]) == 0
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 3 and len(list((out / "runs").iterdir())) == 3
    for row in rows:
        config = json.loads((out / row["run_dir"] / "config.json").read_text())
        assert config["dropout"] in (0.0, 0.1, 0.2) and config["kernel_size"] in (3, 5)
        assert config["model_config"]["kernel_size"] == config["kernel_size"]
        assert row["status"] == "finished"


def test_asha_stops_the_weak_trial_early(ray_address, smoke_root, tmp_path):
    # Designed case: lr 1e-5 barely moves the network (val loss ~ ln 10 = 2.3 after one epoch), lr 0.5 blows up
    # the batch-norm statistics in 2 steps (val loss in the thousands). One trial at a time, the good one
    # first, so ASHA's first rung (epoch 1) has its result when the bad one arrives and stops it there.
    out = tmp_path / "asha"
    assert run(["--data-dir", str(smoke_root), "--epochs", "2", "--param", "lr=0.00001,0.5",
                "--scheduler", "asha", "--metric", "val_loss", "--max-concurrent", "1", "--out", str(out)]) == 0
    rows = {float(r["lr"]): r for r in read_csv(out / "sweep.csv")}
    assert rows[0.00001]["status"] == "finished" and rows[0.00001]["epochs_done"] == "2"
    assert rows[0.5]["status"] == "stopped early" and rows[0.5]["epochs_done"] == "1"
    assert len(read_csv(out / rows[0.5]["run_dir"] / "history.csv")) == 1


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_address, smoke_root, tmp_path):
    out = tmp_path / "resume"
    args = [*TINY, "--data-dir", str(smoke_root), "--epochs", "3", "--param", "dropout=0.0,0.1,0.2",
            "--max-concurrent", "1", "--out", str(out)]
    child = subprocess.Popen([sys.executable, "-m", "lib.scale.sweep", *args, "--address", ray_address], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if (out / "sweep.csv").exists() and any(r["status"] == "finished" for r in read_csv(out / "sweep.csv")):
            break
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)  # as a crash or a lost ssh session would
    child.wait()
    before = {r["run_dir"]: r for r in read_csv(out / "sweep.csv")}
    done = [d for d, r in before.items() if r["status"] == "finished"]
    assert done and len(done) < 3, before
    stamps = {d: (out / d / "config.json").stat().st_mtime_ns for d in done}

    assert sweep.main([*args, "--resume"]) == 0
    rows = read_csv(out / "sweep.csv")
    assert [r["status"] for r in rows] == ["finished"] * 3
    for d in done:  # train() rewrites config.json whenever it starts: finished trials were not started again
        assert (out / d / "config.json").stat().st_mtime_ns == stamps[d]
    for r in rows:
        assert [int(h["epoch"]) for h in read_csv(out / r["run_dir"] / "history.csv")] == [1, 2, 3]


@pytest.mark.parametrize("args, message", [
    (["--param", "dropuot=0.1"], "--param dropuot: unknown setting"),
    (["--param", "dropout=0.1,1.5"], "--dropout 1.5: must be in [0, 1)"),
    (["--param", "dropout="], "--param dropout: empty value list"),
    (["--param", "epochs=2,x"], "--param epochs=x"),
    (["--param", "kernel_size=3,4"], "kernel"),
    (["--param", "dropout=0.1", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: cannot reach"),
])
def test_bad_input_exits_2_before_any_trial(args, message, tmp_path, capsys):
    from lib.common import run_cli
    out = tmp_path / "bad"
    assert run_cli(sweep.main, [*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_folder_holding_another_sweep_is_refused(tmp_path, capsys):
    from lib.common import run_cli
    out = tmp_path / "sw"
    spec = sweep.build_spec(sweep.make_parser().parse_args([*TINY, "--param", "dropout=0.0,0.1", "--out", str(out)]))
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(spec))
    assert run_cli(sweep.main, [*TINY, "--param", "dropout=0.0,0.2", "--out", str(out), "--resume"]) == 2
    assert "holds a different sweep (params differ" in capsys.readouterr().err
    assert run_cli(sweep.main, [*TINY, "--param", "dropout=0.0,0.1", "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
