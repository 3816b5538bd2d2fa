"""The training loop's cadence, seen from outside: when it checks the loss (one host sync every CHECK_FINITE_EVERY
steps and at an epoch's last step, with the running mean loss and the step's number) and when it draws a progress
bar. The training step and the evaluation are stand-ins that return chosen numbers, so the expected values are
worked out by hand and no network is trained."""
import io
import json
import re
from datetime import datetime, timezone

import pytest
import torch

import lib.train as train_mod
from lib.config import make_config
from lib.guard import stopping
from lib.guard.runlock import Terminated
from lib.guard.stopping import CHECK_FINITE_EVERY
from lib.train import train


def tiny(smoke_root, out, **kw):
    return make_config("smoke", **{"model": "light_resnet18", "base_channels": 8, "progress": False,
                                   "device": "cpu", "num_workers": 0, "data_dir": str(smoke_root),
                                   "out": str(out), "val_size": 20, "augment": "none", "mix_prob": 0.0, **kw})


@pytest.fixture
def stand_ins(monkeypatch):
    """train_step: loss 1.0 on odd calls, 2.0 on even ones, nothing right; evaluate: val_acc 0.5."""
    calls = {"n": 0}

    def fake_step(model, x, soft_y, optimizer, scheduler, *a, **kw):
        optimizer.step()
        scheduler.step()
        calls["n"] += 1
        return torch.tensor(1.0 if calls["n"] % 2 else 2.0), torch.tensor(0.0), torch.tensor(0)

    monkeypatch.setattr(train_mod, "train_step", fake_step)
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **kw: (1.0, 0.5))


def test_the_loss_is_checked_every_50_steps_and_at_the_epochs_end(smoke_root, tmp_path, monkeypatch, stand_ins):
    assert CHECK_FINITE_EVERY == 50  # the numbers below are worked out for 50
    seen = []
    monkeypatch.setattr(stopping, "check_in", lambda ctx, mean_loss, epoch, step, last_path:
                        seen.append((epoch, step, mean_loss)))
    # 202 images in batches of 2: 101 steps an epoch; losses 1, 2, 1, 2, ... (the stand-in counts across epochs)
    train(tiny(smoke_root, tmp_path / "run", train_size=202, batch_size=2, epochs=2))
    assert [(e, s) for e, s, _ in seen] == [(0, 50), (0, 100), (0, 101), (1, 50), (1, 100), (1, 101)]
    # epoch 1: steps 1-50 and 1-100 average 1.5; step 101 adds a 1: (150 + 1) / 101
    # epoch 2 starts on the stand-in's 102nd call (a 2): its 50 and 100 steps still average 1.5, then a 2
    assert [m for _, _, m in seen] == pytest.approx([1.5, 1.5, 151 / 101, 1.5, 1.5, 152 / 101])


def test_no_bar_when_the_log_is_a_file_and_one_on_a_terminal(smoke_root, tmp_path, monkeypatch, stand_ins, capsys):
    train(tiny(smoke_root, tmp_path / "file", train_size=20, batch_size=10, epochs=1, progress=True))
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    assert "it/s]" not in err and "%|" not in err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(tiny(smoke_root, tmp_path / "tty", train_size=20, batch_size=10, epochs=1, progress=True))
    shown = terminal.getvalue()
    assert "\repoch 1/1:   0%|" in shown and "| 0/2 [" in shown  # the bar over the epoch's two steps
    assert shown.endswith("\r") and shown.rsplit("\r", 2)[1].strip() == ""  # wiped when the epoch ends


def test_the_run_validates_on_val_size_images_and_records_what_it_resolved(smoke_root, tmp_path, monkeypatch,
                                                                         stand_ins):
    seen = []
    monkeypatch.setattr(train_mod, "evaluate", lambda model, loader, dtype: seen.append(len(loader.y)) or (1.0, 0.5))
    run = tmp_path / "run"
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=1, val_size=30))
    assert seen == [30]  # --val-size 30: 30 validation images, not the whole test batch
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["n_val"] == 30 and recorded["n_train"] == 20
    assert recorded["channels_last"] is False and recorded["loader"] == "torchvision"  # resolved for the CPU
    assert recorded["amp_dtype"] is None  # no mixed precision on the CPU: null, not the string "None"


def conv_weights(path):
    state = torch.load(path, weights_only=True)["model"]
    return [v for v in state.values() if v.dim() == 4]


def test_the_model_is_channels_last_only_when_asked_on_the_cpu(smoke_root, tmp_path, stand_ins):
    """Auto on the CPU: the standard layout (oneDNN's NHWC backward can crash there); --channels-last: NHWC. The
    checkpoint keeps the layout the model trained in (torch.save keeps strides)."""
    train(tiny(smoke_root, tmp_path / "auto", train_size=20, batch_size=10, epochs=1))
    weights = conv_weights(tmp_path / "auto" / "best.pt")
    assert len(weights) > 10 and all(w.is_contiguous() for w in weights)
    train(tiny(smoke_root, tmp_path / "nhwc", train_size=20, batch_size=10, epochs=1, channels_last=True))
    weights = conv_weights(tmp_path / "nhwc" / "best.pt")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.shape[2:] != (1, 1))
    assert not all(w.is_contiguous() for w in weights)


def test_resume_says_where_it_continues_or_that_nothing_is_left(smoke_root, tmp_path, stand_ins, capsys):
    run = tmp_path / "run"
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=3, stop_after_epochs=1))
    capsys.readouterr()
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=3, stop_after_epochs=2, resume=True))
    out, err = capsys.readouterr()
    assert f"resuming {run} at epoch 2/3\n" in err and "resuming" not in out
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=3, resume=True))
    assert f"resuming {run} at epoch 3/3\n" in capsys.readouterr().err
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=3, resume=True))
    out, err = capsys.readouterr()
    assert f"{run}: all 3 epochs already done\n" in err and "resuming" not in err + out


def test_what_a_run_prints_returns_and_hands_each_epoch(smoke_root, tmp_path, stand_ins, capsys):
    """Two epochs of two steps (losses 1 and 2, nothing right), validation 0.5: the header on stderr, one line per
    epoch on stdout (lr 0.1, then the cosine's 0.05), each row handed to on_epoch, and what train returns."""
    run = tmp_path / "run"
    rows = []
    result = train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=2), on_epoch=rows.append)
    out, err = capsys.readouterr()
    header = err.splitlines()[0]
    data = smoke_root / "cifar-10-batches-py"
    assert header == (f"light_resnet18: 0.18M parameters | synthetic smoke data at {data}; "
                      f"train 20 (class-balanced subset of 1000, seed 0); val = official test batch, 20 "
                      f"(class-balanced subset of 500, seed 0) | cpu (torchvision loader, amp=None, "
                      f"channels_last=False)")
    assert "torchrun" not in err
    lines = out.splitlines()
    assert [re.sub(r"  \d+\.\ds$", "", line) for line in lines] == [
        "epoch   1/2  lr 0.1000  train_loss 1.5000  train_acc 0.00%  val_loss 1.0000  val_acc 50.00%  best 50.00%",
        "epoch   2/2  lr 0.0500  train_loss 1.5000  train_acc 0.00%  val_loss 1.0000  val_acc 50.00%  best 50.00%"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result["history"]
    assert rows[1]["lr"] == pytest.approx(0.05) and rows[0]["val_acc"] == 0.5
    assert rows[0] is not result["history"][0], "on_epoch gets a copy"
    assert {k: v for k, v in result.items() if k != "history"} == {
        "run_dir": str(run), "best_val_acc": 0.5, "epochs_done": 2, "schedule": "2 epochs"}


@pytest.mark.parametrize("signal, why", [(KeyboardInterrupt, "interrupted"), (Terminated, "terminated (SIGTERM)")])
def test_an_interrupted_epoch_is_abandoned_and_said_so(smoke_root, tmp_path, monkeypatch, stand_ins, capsys, signal,
                                                       why):
    """Ctrl-C or SIGTERM at epoch 2's first step: the exception goes on (the command's exit code comes from it),
    the run keeps epoch 1, and stderr says which epoch was abandoned and how to continue."""
    calls = {"n": 0}
    fake_step = train_mod.train_step  # the stand-in

    def stopped_at_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise signal()
        return fake_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", stopped_at_third_step)
    run = tmp_path / "run"
    with pytest.raises(signal):
        train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=3))
    assert (f"{why} during epoch 2/3: it is abandoned; {run} keeps epochs 1-1 (last.pt, history.csv). To continue, "
            f"run again with the same settings and --resume\n") in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


def test_the_checkpoint_holds_what_resume_reads_and_config_json_when_the_run_began(smoke_root, tmp_path, stand_ins):
    """last.pt's keys (format 2; no GradScaler on the CPU: scaler None); config.json's started_at, UTC to the
    second, kept when the run is resumed."""
    run = tmp_path / "run"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=2, stop_after_epochs=1))
    after = datetime.now(timezone.utc)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert set(ckpt) == {"format", "config", "model_config", "normalization", "label_names", "data", "model",
                         "optimizer", "scheduler", "scaler", "epoch", "best_epoch", "best_val_acc", "history"}
    assert ckpt["scaler"] is None and ckpt["format"] == 2
    started = json.loads((run / "config.json").read_text())["started_at"]
    assert before <= datetime.fromisoformat(started) <= after and started.endswith("+00:00")
    train(tiny(smoke_root, run, train_size=20, batch_size=10, epochs=2, resume=True))
    assert json.loads((run / "config.json").read_text())["started_at"] == started
