"""lib.gpu_runs: the plan from measured times (expectations computed by hand), the deadline, option errors."""
import json
import sys

import pytest
import torch

from lib import gpu_runs
from lib.common import UserError, run_cli
from lib.gpu_runs import Launcher, Measured, choose_plan, fit, plan_ab

R = "robust_resnet64"


def test_fit_counts_whole_epochs():
    assert fit(100, 10, 30) == 3   # 10 + 3 * 30 = 100: exactly fits
    assert fit(100, 10, 31) == 2   # 10 + 3 * 31 = 103 > 100
    assert fit(5, 10, 1) == 0      # the overhead alone is over budget


def test_sequential_when_sharing_the_gpu_gains_nothing():
    # alone: 10 s and 20 s per epoch; together each takes as long as both did (no overlap gained) or longer
    m = {"light_resnet18": Measured(10, 5, 25), R: Measured(20, 10, 45)}
    plan = choose_plan(m, 400)
    # one after another: 15 s of overheads + n * 30 s <= 400 -> n = 12 (375 s); together:
    # min((400 - 5) // 25, (400 - 10) // 45) = min(15, 8) = 8 epochs
    assert plan["mode"] == "sequential" and plan["epochs"] == {"light_resnet18": 12, R: 12}
    assert plan["predicted_s"] == pytest.approx(375)
    assert not plan["full_reproduction"]


def test_concurrent_when_it_trains_more():
    m = {"light_resnet18": Measured(10, 5, 15), R: Measured(20, 10, 25)}
    plan = choose_plan(m, 400)
    # together: min((400 - 5) // 15, (400 - 10) // 25) = min(26, 15) = 15 > 12 one after another
    assert plan["mode"] == "concurrent" and plan["epochs"] == {"light_resnet18": 15, R: 15}
    assert plan["predicted_s"] == pytest.approx(10 + 15 * 25)  # the slowest run: 385 s
    assert {a["mode"] for a in plan["alternatives"]} == {"sequential"}


def test_full_reproduction_when_300_epochs_fit():
    # RobustResNet64 at 1 s per epoch: 10 + 300 = 310 s; the light model gets (400 - 310 - 5) // 2 = 42 epochs
    m = {"light_resnet18": Measured(2, 5, 3), R: Measured(1.0, 10, 1.5)}
    plan = choose_plan(m, 400)
    assert plan["full_reproduction"] and plan["mode"] == "sequential"
    assert plan["epochs"] == {R: 300, "light_resnet18": 42}
    assert plan["predicted_s"] == pytest.approx(310 + 5 + 42 * 2)  # 399 s
    assert list(plan["epochs"])[0] == R  # run first: the number the report is judged by


def test_no_full_reproduction_when_it_does_not_fit():
    m = {"light_resnet18": Measured(2, 5, 3), R: Measured(1.5, 10, 2)}  # 10 + 450 > 400 even alone
    plan = choose_plan(m, 400)
    assert not plan["full_reproduction"]
    # one after another: (400 - 15) // 3.5 = 110; together: min(395 // 3, 390 // 2) = min(131, 195) = 131
    assert plan["mode"] == "concurrent" and plan["epochs"] == {"light_resnet18": 131, R: 131}


def test_concurrent_plan_uses_the_overhead_measured_together():
    # starting all at once took 40 s each: min((400 - 40) // 15, (400 - 40) // 25) = min(24, 14) = 14 > 12
    m = {"light_resnet18": Measured(10, 5, 15, 40), R: Measured(20, 10, 25, 40)}
    plan = choose_plan(m, 400)
    assert plan["mode"] == "concurrent" and plan["epochs"] == {"light_resnet18": 14, R: 14}
    assert plan["predicted_s"] == pytest.approx(40 + 14 * 25)


def test_without_a_concurrent_measurement_only_sequential():
    plan = choose_plan({R: Measured(20, 10)}, 100)
    assert plan["mode"] == "sequential" and plan["epochs"] == {R: 4} and plan["alternatives"] == []


def test_budget_too_small_is_a_user_error():
    with pytest.raises(UserError, match="not enough for one epoch"):
        choose_plan({"light_resnet18": Measured(10, 5, 15), R: Measured(20, 10, 25)}, 30)


def test_ab_epochs():
    assert plan_ab(20, 40, 10, 200) == 3        # (200 - 2 * 10) // (20 + 40)
    assert plan_ab(1, 2, 1, 1000, max_epochs=15) == 15
    assert plan_ab(20, 40, 10, 50) == 0


class _Sleeper(Launcher):
    """Children that write a one-epoch history.csv, then sleep: what a run stopped mid-training leaves."""

    def command(self, model, out, epochs, extra=()):
        script = ("import pathlib, sys, time; pathlib.Path(sys.argv[1], 'history.csv').write_text("
                  "'epoch,val_acc,best_val_acc,epoch_seconds\\n1,0.5,0.5,0.25\\n'); time.sleep(float(sys.argv[2]))")
        return [sys.executable, "-c", script, str(out), str(epochs)]


def test_deadline_stops_runs_and_keeps_their_epochs(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(gpu_runs, "GRACE_S", 2.0)
    t0 = time.monotonic()
    res = _Sleeper(None).run({"slow": ("m", tmp_path / "slow", 60, ()), "quick": ("m", tmp_path / "quick", 0, ())},
                             deadline=t0 + 3.5)
    assert time.monotonic() - t0 < 3.5 + 0.5  # stopped before the deadline, not after it
    assert res["slow"]["stopped_at_deadline"] and res["slow"]["returncode"] != 0
    assert not res["quick"]["stopped_at_deadline"] and res["quick"]["returncode"] == 0
    for r in res.values():
        assert r["epochs_done"] == 1 and r["best_val_acc"] == 0.5 and r["epoch_s"] == [0.25]


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0", "--device", "cpu"], "--minutes"),
    (["run", "--device", "cpu"], "--measure"),
    (["--models", "resnet9000", "--device", "cpu"], "resnet9000"),
    (["--ab-share", "1.5", "--device", "cpu"], "--ab-share"),
])
def test_bad_options_exit_2(args, message, tmp_path, capsys):
    assert run_cli(gpu_runs.main, [*args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_taken_out_folder_and_missing_gpu_exit_2(tmp_path, capsys):
    (tmp_path / "table1").mkdir()
    assert run_cli(gpu_runs.main, ["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "already holds table1/" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_cli(gpu_runs.main, ["--device", "cuda", "--out", str(tmp_path / "new")]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_measure_file_errors(tmp_path, smoke_root, capsys):
    bad = tmp_path / "measure.json"
    bad.write_text("{not json")
    args = ["run", "--device", "cpu", "--measure", str(bad), "--out", str(tmp_path / "o"), "--profile", "smoke",
            "--data-dir", str(smoke_root)]
    assert run_cli(gpu_runs.main, args) == 2
    assert "cannot read" in capsys.readouterr().err
    bad.write_text(json.dumps({"models": {"light_resnet18": {"epoch_s": 1.0, "overhead_s": 1.0}}}))
    assert run_cli(gpu_runs.main, args) == 2
    assert "no measurement for light_resnet18_v2" in capsys.readouterr().err
    assert not (tmp_path / "o" / "table1").exists()


def test_gpu_window_keeps_every_stage_when_one_fails(smoke_root, tmp_path):
    """tests/gpu_window.sh on the CPU with a tiny budget and its bench stage made to fail (an unknown model): the
    other stages still run and $OUT holds their files, and the window's log says which stage failed."""
    import os
    import subprocess

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "DATA": str(smoke_root), "WORK": str(work),
           "OUT": str(out), "WINDOW_MINUTES": "3", "TRAIN_RESERVE_SECONDS": "5", "OMP_NUM_THREADS": "1",
           "BENCH_ARGS": "--models resnet9000",
           "TRAIN_ARGS": "--epochs 2 --train-size 40 --val-size 20 --batch-size 20 --base-channels 8 "
                         "--blocks-per-group 1"}
    proc = subprocess.run(["bash", str(gpu_runs.REPO / "tests" / "gpu_window.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["bench/bench.log", "tests/pytest.log", "train/config.json", "train/history.csv",
                     "train/train.log", "window.log"]
    assert "resnet9000" in (out / "bench" / "bench.log").read_text()
    assert "skipped" in (out / "tests" / "pytest.log").read_text()  # no CUDA here: collected, skipped
    history = (out / "train" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3  # both epochs of the (shortened) schedule
    config = json.loads((out / "train" / "config.json").read_text())
    assert config["model"] == "robust_resnet64" and config["profile"] == "paper" and config["time_limit"] > 0
    log = (out / "window.log").read_text()
    assert "== bench: exit 2" in log and "== tests: exit 0" in log and "== train: exit 0" in log
    assert "failed: bench" in log and "(no " in log  # the missing bench.json reported, the copies went on
