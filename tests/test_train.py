"""The training recipe and its run folder, on smoke data, on the CPU."""
import csv
import errno
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lib.checkpoint as checkpoint_mod
import lib.train as train_mod
from lib.checkpoint import HISTORY_FIELDS
from lib.guard.writes import WriteFailedError, torch_save_size, write_or_explain
from lib.common import run_cli
from lib.config import make_config
from lib.recipe import make_optimizer, make_scheduler
from lib.train import DivergedError, train

REPO = Path(__file__).resolve().parent.parent
TINY = dict(model="light_resnet18", base_channels=8, progress=False, device="cpu", num_workers=0)


def tiny_config(smoke_root, out, **kw):
    settings = {**TINY, "data_dir": str(smoke_root), "out": str(out), "train_size": 160, "val_size": 80,
                "batch_size": 32, "epochs": 2, **kw}
    return make_config("smoke", **settings)


def read_history(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


def train_cli(capsys, *args) -> tuple[int, str]:
    """``python -m lib.train ARGS`` in this process (what the module's __main__ runs): exit code and stderr."""
    try:
        code = run_cli(train_mod.main, [str(a) for a in args])
    except SystemExit as exc:  # argparse's own exit on a malformed option
        code = exc.code
    return code, capsys.readouterr().err


def test_learns_on_smoke_data(smoke_root, tmp_path):
    """A few hundred steps: the loss falls and validation accuracy clearly beats chance (10%)."""
    cfg = tiny_config(smoke_root, tmp_path / "run", train_size=None, val_size=200, epochs=6, augment="none",
                      mix_prob=0.0, lr=0.05, warmup_epochs=0.5)
    summary = train(cfg)
    rows = read_history(tmp_path / "run")
    assert len(rows) == 6 and summary["epochs_done"] == 6
    assert float(rows[-1]["train_loss"]) < 0.7 * float(rows[0]["train_loss"])
    assert summary["best_val_acc"] > 0.4


def test_run_folder_contents(smoke_root, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(smoke_root, run, dropout=None, seed=3))
    rows = read_history(run)
    assert list(rows[0]) == list(HISTORY_FIELDS)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for k in ("train_acc", "val_acc", "best_val_acc"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert float(r["epoch_seconds"]) > 0
    best = [float(r["best_val_acc"]) for r in rows]
    assert best == sorted(best) and best[-1] == max(float(r["val_acc"]) for r in rows)

    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 3 and config["epochs"] == 2 and config["model"] == "light_resnet18"
    assert config["data_source"] == "synthetic" and config["profile"] == "smoke"
    assert config["model_config"]["widths"] == [8, 16, 32, 64]
    assert config["parameters"] > 0 and config["versions"]["torch"] == torch.__version__
    assert len(config["normalization"]["mean"]) == 3 and "device_name" in config and "git_commit" in config

    last = torch.load(run / "last.pt", weights_only=True)
    best_ckpt = torch.load(run / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert best_ckpt["best_val_acc"] == pytest.approx(best[-1])
    assert {"model", "optimizer", "scheduler", "best_epoch", "model_config", "normalization"} <= set(last)
    assert not list(run.glob(".*.tmp")), "no temporary files left behind"


class StopAfterOne(Exception):
    pass


def train_first_epoch_only(cfg):
    """Run ``cfg`` but stop (as if killed) right after epoch 1's last.pt is written."""
    real_save = checkpoint_mod.atomic_torch_save

    def save_then_stop(obj, path):
        real_save(obj, path)
        if Path(path).name == "last.pt" and obj["epoch"] == 1:
            raise StopAfterOne

    checkpoint_mod.atomic_torch_save = save_then_stop
    try:
        with pytest.raises(StopAfterOne):
            train(cfg)
    finally:
        checkpoint_mod.atomic_torch_save = real_save


def test_resume_gives_the_same_history(smoke_root, tmp_path):
    """2 epochs straight == 1 epoch, stop, --resume for the second (CPU, fixed seed): same numbers, same weights."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(smoke_root, straight))
    train_first_epoch_only(tiny_config(smoke_root, split))
    assert torch.load(split / "last.pt", weights_only=True)["epoch"] == 1
    train(tiny_config(smoke_root, split, resume=True))

    a, b = read_history(straight), read_history(split)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(a) == drop(b)
    wa = torch.load(straight / "last.pt", weights_only=True)["model"]
    wb = torch.load(split / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_checkpoint_write_keeps_last_good(smoke_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_first_epoch_only(tiny_config(smoke_root, run))
    good = (run / "last.pt").read_bytes()

    def torch_save_dies_midway(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_dies_midway)
    with pytest.raises(WriteFailedError, match="disk full"):
        train(tiny_config(smoke_root, run, resume=True))  # epoch 2's save dies half-way
    monkeypatch.undo()
    assert (run / "last.pt").read_bytes() == good
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp")), "the half-written temporary file is removed"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real = train_mod.make_criterion

    def poisoned(cfg):
        ce = real(cfg)

        def loss(logits, target):
            calls["n"] += 1
            out = ce(logits, target)
            return out * float("nan") if calls["n"] > 5 else out  # 5 steps = epoch 1 (160 / 32)
        return loss

    monkeypatch.setattr(train_mod, "make_criterion", poisoned)
    with pytest.raises(DivergedError, match="nan"):
        train(tiny_config(smoke_root, run, epochs=3))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(read_history(run)) == 1


def test_schedule_is_linear_warmup_then_cosine_per_step():
    cfg = make_config("paper", epochs=20, warmup_epochs=2, lr=0.1, lr_step="iteration")  # a tenth: not capped
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(cfg, model)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    sched = make_scheduler(cfg, opt, steps_per_epoch=5)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 10)
    assert lrs[:10] == sorted(lrs[:10]) and lrs[10] == pytest.approx(0.1)
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] < 0.001
    # cosine over the 90 steps after warm-up: half the peak half-way, 0.1 * (1 + cos(pi/3)) / 2 a third in
    assert lrs[55] == pytest.approx(0.05, rel=1e-4) and lrs[40] == pytest.approx(0.075, rel=1e-4)


@pytest.mark.parametrize("args, needle", [
    (["--model", "resnet9000"], "resnet9000"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "fast"], "--lr"),
    (["--augment", "crop,sparkles"], "sparkles"),
    (["--kernel-size", "4"], "kernel"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--val-source", "holdout", "--holdout-fraction", "1.5"], "--holdout-fraction"),
])
def test_cli_bad_input_is_one_line_exit_2(smoke_root, tmp_path, args, needle, capsys):
    code, err = train_cli(capsys, "--profile", "smoke", "--data-dir", smoke_root, "--out", tmp_path / "run",
                          "--no-progress", *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_missing_data_names_the_folder(tmp_path, capsys):
    code, err = train_cli(capsys, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run", "--epochs", "1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err and "--download" in err


def test_cli_end_to_end_and_resume_rules(smoke_root, tmp_path, capsys):
    """The real command once (`python -m lib.train`, a subprocess), then the resume rules in this process."""
    out = tmp_path / "run"
    common = ["--profile", "smoke", "--data-dir", str(smoke_root), "--out", str(out), "--model", "light_resnet18",
              "--base-channels", "8", "--train-size", "64", "--val-size", "40", "--epochs", "1", "--no-progress"]
    res = subprocess.run([sys.executable, "-m", "lib.train", *common], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "best val accuracy" in res.stdout and (out / "best.pt").exists()
    code, err = train_cli(capsys, *common)  # same folder without --resume: refuse rather than overwrite
    assert code == 2 and "--resume" in err
    code, err = train_cli(capsys, *common[:-3], "--epochs", "3", "--no-progress", "--resume")
    assert code == 2 and "--epochs" in err
    code, err = train_cli(capsys, *common, "--resume")  # already finished: resumes to nothing, keeps the history
    assert code == 0 and len(read_history(out)) == 1


FULL_DISK = [OSError(errno.ENOSPC, "No space left on device"),  # a write that finds the disk full
             # what torch.save's zip writer raises when the disk fills part-way through the file
             RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 17662016 vs 17661904")]


def test_full_disk_while_saving_ends_in_one_line_and_the_run_continues(smoke_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["--profile", "smoke", "--data-dir", str(smoke_root), "--out", str(run), "--model", "light_resnet18",
            "--base-channels", "8", "--train-size", "64", "--val-size", "40", "--epochs", "2", "--no-progress"]
    assert train_cli(capsys, *args, "--stop-after-epochs", "1")[0] == 0
    good = (run / "last.pt").read_bytes()
    real_save = torch.save
    for failure in FULL_DISK:
        def save_until_full(obj, f, *a, **k):
            if isinstance(f, io.BytesIO):  # in memory: nothing to fill
                return real_save(obj, f, *a, **k)
            Path(f).write_bytes(b"part of a checkpoint")
            raise failure

        monkeypatch.setattr(torch, "save", save_until_full)
        code, err = train_cli(capsys, *args, "--resume")
        monkeypatch.undo()
        last = err.strip().splitlines()[-1]
        assert code == 74 and "Traceback" not in err and last.startswith("error: ")
        assert f"{run / 'last.pt'}: could not be written" in last
        assert ("No space left on device" if isinstance(failure, OSError) else "stopped part-way") in last
        free, needs = (float(re.search(rf"([\d.]+) MB {w}", last).group(1)) for w in ("free", "needed"))
        assert free == pytest.approx(shutil.disk_usage(run).free / 1e6, rel=0.05, abs=1)
        assert needs == pytest.approx(len(good) / 1e6, rel=0.05)  # epoch 2's checkpoint: as large as epoch 1's
        assert "keeps epochs 1-1 complete" in last
        assert last.endswith(f"python -m lib.train {shlex.join([*args, '--resume'])}")
        assert (run / "last.pt").read_bytes() == good and len(read_history(run)) == 1
        assert not list(run.glob(".*.tmp")), "no temporary file left"
    assert train_cli(capsys, *args, "--resume")[0] == 0  # room again: the run goes on from epoch 2
    assert [int(r["epoch"]) for r in read_history(run)] == [1, 2]


@pytest.mark.parametrize("failure, why", [(PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
                                          (FileNotFoundError(errno.ENOENT, "No such file or directory"),
                                           "No such file or directory")])
def test_an_unwritable_run_folder_is_one_line(tmp_path, failure, why):
    def write(path):
        raise failure

    with pytest.raises(WriteFailedError) as info:
        write_or_explain(tmp_path / "gone" / "history.csv", write, lambda: 2_000_000, tmp_path / "gone", 3)
    message = str(info.value)
    assert why in message and "2.0 MB needed" in message and "keeps epochs 1-3 complete" in message
    assert "\n" not in message and info.value.exit_code == 74


def test_other_runtime_errors_keep_their_traceback(tmp_path):
    def write(path):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        write_or_explain(tmp_path / "last.pt", write, lambda: 1, tmp_path, 1)


def test_the_size_a_failed_write_needed_is_what_torch_save_writes(tmp_path):
    state = {"model": {"w": torch.zeros(1000)}, "optimizer": {"state": {0: {"m": torch.ones(10, dtype=torch.float64)}}}}
    torch.save(state, tmp_path / "s.pt")
    # the same bytes but for the archive's record names (a file's stem in place of "archive")
    assert torch_save_size(state) == pytest.approx((tmp_path / "s.pt").stat().st_size, rel=0.05)
    # what torch.save cannot write at all (a lambda inside): the tensors' bytes, 4,000 + 80
    assert torch_save_size({**state, "callback": lambda: 0}) == 4080

