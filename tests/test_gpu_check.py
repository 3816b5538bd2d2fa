"""lib.gpu_check (make gpu-check): option errors before anything runs, the choice of the training step, and a dry
run on the CPU in which a failing stage does not stop the ones after it."""
import json
import os
import subprocess
import sys

import pytest
import torch

from lib import gpu_check
from lib.common import run_cli
from lib.gpu_check import fastest_step

REPO = gpu_check.REPO


def test_fastest_step_compares_the_step_fed_by_the_loader():
    bench = {"eager": {"train_step_with_loader_img_s": {"robust_resnet64": 9000.0, "light_resnet18": 30000.0}},
             "compile": {"train_step_with_loader_img_s": {"robust_resnet64": 11000.0, "light_resnet18": 20000.0}},
             "cuda_graphs": {"data_pipeline": {}}}  # cut off before its step phase: no rate
    assert fastest_step(bench) == ("compile", {"eager": 9000.0, "compile": 11000.0})
    assert fastest_step(bench, "light_resnet18")[0] == "eager"
    assert fastest_step({}) == (None, {})


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes"),
    (["--device", "tpu"], "--device tpu"),
    (["--train-args", "--dropout '0.1"], "--train-args"),
    (["--skip", "train"], "argument --skip: invalid choice: 'train'"),  # argparse's own line
])
def test_bad_options_exit_2_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--data-dir", str(tmp_path), *args, "--out", str(out)]
    try:
        code = run_cli(gpu_check.main, argv)
    except SystemExit as exc:  # argparse exits itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_and_missing_gpu_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(gpu_check.main, ["--device", "cpu", "--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert "no CIFAR-10 there; add --download" in capsys.readouterr().err
    (tmp_path / "jpeg").mkdir()
    (tmp_path / "jpeg" / "cifar10_from_jpeg.py").write_text("")
    assert run_cli(gpu_check.main, ["--device", "cpu", "--data-dir", str(tmp_path), "--jpeg-dir",
                                    str(tmp_path / "jpeg"), "--out", str(out)]) == 2
    assert "no cifar10-train-jpeg.tar.gz, cifar10-test-jpeg.tar.gz there" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_cli(gpu_check.main, ["--data-dir", str(tmp_path), "--out", str(out)]) == 2
        assert "no CUDA device here" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_keeps_every_stage_when_one_fails(smoke_root, tmp_path):
    """The benchmark made to fail (an unknown model): the training after it still runs, every stage's log and the
    run's files are in OUT, and summary.json and the exit code say which stages failed."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lib.gpu_check", "--dry-run", "--out", str(out), "--data-dir", str(smoke_root),
           "--minutes", "3", "--min-train-minutes", "0.5", "--bench-args", "--models resnet9000",
           "--skip", "compile_tests"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("data", "passed"), ("tests", "passed"), ("bench_eager", "failed"), ("bench_compile", "failed"),
        ("bench_cuda_graphs", "skipped"), ("compile_tests", "skipped"), ("train", "passed")]
    assert summary["failed"] == ["bench_eager", "bench_compile"]
    assert summary["train_step"]["chosen"] == "eager"  # nothing measured: the plain step
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["bench_compile.log", "bench_eager.log", "gpu_check.log", "machine.txt", "summary.json",
                     "tests.log", "train.log"]
    assert "resnet9000" in (out / "bench_eager.log").read_text()
    assert "9 skipped" in (out / "tests.log").read_text()  # no CUDA here: collected, skipped
    history = (out / "robust_resnet64" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3  # both epochs of the dry run's 2-epoch schedule
    config = json.loads((out / "robust_resnet64" / "config.json").read_text())
    assert config["model"] == "robust_resnet64" and config["profile"] == "paper" and config["time_limit"] > 0
    assert "failed: bench_eager, bench_compile" in (out / "gpu_check.log").read_text()
