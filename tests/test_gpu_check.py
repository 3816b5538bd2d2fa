"""lib.bench.gpu_check (make gpu-check): option errors before anything runs, the choice of the training step, and
a dry run on the CPU in which a failing stage does not stop the ones after it."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lib.bench import gpu_check
from lib.bench.gpu_check import choose_step, fastest_step
from lib.common import run_cli

REPO = gpu_check.REPO


def test_fastest_step_compares_the_step_fed_by_the_loader():
    bench = {"eager": {"train_step_with_loader_img_s": {"robust_resnet64": 9000.0, "light_resnet18": 30000.0}},
             "compile": {"train_step_with_loader_img_s": {"robust_resnet64": 11000.0, "light_resnet18": 20000.0}},
             "cuda_graphs": {"data_pipeline": {}}}  # cut off before its step phase: no rate
    assert fastest_step(bench) == ("compile", {"eager": 9000.0, "compile": 11000.0})
    assert fastest_step(bench, "light_resnet18")[0] == "eager"
    assert fastest_step({}) == (None, {})


def test_the_run_takes_the_fastest_step_unless_the_compile_tests_failed():
    rate = lambda r: {"train_step_with_loader_img_s": {"robust_resnet64": r}}  # noqa: E731
    bench = {"eager": rate(100.0), "compile": rate(150.0), "cuda_graphs": rate(180.0)}
    assert choose_step("fastest", bench, "passed")[0] == "cuda_graphs"
    assert choose_step("fastest", bench, "skipped")[0] == "cuda_graphs"  # not run: the benchmark decides
    assert choose_step("fastest", bench, "failed")[0] == "eager"
    assert choose_step("fastest", bench, "time limit")[0] == "eager"
    assert choose_step("compile", bench, "failed")[0] == "compile"  # asked for: taken as asked
    assert choose_step("fastest", {}, None) == ("eager", {})


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
    cmd = [sys.executable, "-m", "lib.bench.gpu_check", "--dry-run", "--out", str(out), "--data-dir", str(smoke_root),
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
    # no CUDA here: every CUDA test collected and skipped, none failed or passed
    assert re.search(r"\b\d+ skipped\b", (out / "tests.log").read_text())
    assert not re.search(r"\b\d+ (passed|failed|error)", (out / "tests.log").read_text())
    history = (out / "robust_resnet64" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3  # both epochs of the dry run's 2-epoch schedule
    config = json.loads((out / "robust_resnet64" / "config.json").read_text())
    assert config["model"] == "robust_resnet64" and config["profile"] == "paper" and config["time_limit"] > 0
    assert "failed: bench_eager, bench_compile" in (out / "gpu_check.log").read_text()


FAKE_CONVERTER = """import shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[-1])
from lib.sources.synthetic import write_smoke_dataset
args = sys.argv[1:-1]
with open(Path(args[0]).parent / "calls.txt", "a") as f:
    f.write(" ".join(Path(a).name for a in args) + "\\n")
test = "--batch-name" in args
tmp = Path(tempfile.mkdtemp())
write_smoke_dataset(tmp)
out = Path(args[1]) / "cifar-10-batches-py"
out.mkdir(parents=True, exist_ok=True)
for name in (["test_batch"] if test else [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]):
    shutil.copy(tmp / "cifar-10-batches-py" / name, out / name)
"""


def test_jpeg_copy_is_converted_train_then_test(tmp_path, monkeypatch):
    """--jpeg-dir: the converter beside the tarballs runs twice, training tarball first, then the test tarball with
    --batch-name test_batch (both write batches.meta), into --data-dir; the stage is recorded once."""
    jpeg, data, out = tmp_path / "jpeg", tmp_path / "data", tmp_path / "out"
    jpeg.mkdir()
    for name in gpu_check.JPEG_FILES[1:]:
        (jpeg / name).write_bytes(b"")
    (jpeg / "cifar10_from_jpeg.py").write_text(FAKE_CONVERTER)
    out.mkdir()
    check = gpu_check.Check(out, 300, dict(os.environ))
    monkeypatch.setattr(check, "stage", _with_repo_arg(check.stage))  # the fake imports lib from the repository
    args = type("Args", (), {"data_dir": data, "jpeg_dir": jpeg, "dry_run": False, "download": False})()
    assert not gpu_check.has_cifar(data)
    assert gpu_check.prepare_data(check, args)
    assert (jpeg / "calls.txt").read_text().splitlines() == [
        f"cifar10-train-jpeg.tar.gz {data.name}", f"cifar10-test-jpeg.tar.gz {data.name} --batch-name test_batch"]
    assert [(s["stage"], s["status"]) for s in check.summary["stages"]] == [("data", "passed")]
    assert (out / "data_train.log").is_file() and (out / "data_test.log").is_file()


def _with_repo_arg(stage):
    def call(name, cmd, limit, **kw):
        return stage(name, [*cmd, str(REPO)], limit, **kw)
    return call
