"""The recipe against hand-computed facts: AMP policy per GPU generation, label smoothing on mixed targets,
the warm-up cap, train mode after evaluation, and best.pt holding the best epoch's weights."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import lib.checkpoint as checkpoint_mod
import lib.train as train_mod
from lib.common import UserError, amp_dtype
from lib.config import make_config
from lib.recipe import make_criterion
from lib.train import train
from recipe_helpers import learning_rates

TINY = dict(model="light_resnet18", base_channels=8, train_size=32, val_size=20, batch_size=16, device="cpu",
            num_workers=0, augment="standard")


def tiny(smoke_root, out, **kw):
    return make_config("smoke", **{**TINY, "data_dir": str(smoke_root), "out": str(out), **kw})


def read_history(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- AMP policy
@pytest.mark.parametrize("capability, expected", [
    ((6, 0), torch.float16),   # P100
    ((7, 0), torch.float16),   # V100
    ((7, 5), torch.float16),   # T4 (Colab's free GPU): bf16 only emulated there
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_amp_uses_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # says yes under emulation too
    monkeypatch.setattr(torch.version, "hip", None)
    assert amp_dtype(torch.device("cuda")) == expected
    assert amp_dtype(torch.device("cuda:0")) == expected
    assert amp_dtype(torch.device("cpu")) is None


# ------------------------------------------------------------------------------------------- the loss
def test_label_smoothing_on_mixed_targets_is_the_mix_of_smoothed_losses():
    """3 classes, eps 0.3, logits (0, 0, ln 2): softmax (1/4, 1/4, 1/2). Smoothed one-hot of class 0 is
    (0.8, 0.1, 0.1): CE = 0.9 ln 4 + 0.1 ln 2 = 1.9 ln 2; of class 2, (0.1, 0.1, 0.8): CE = 0.2 ln 4 + 0.8 ln 2
    = 1.2 ln 2. Mixed 1/4 : 3/4 -> 0.25 * 1.9 ln 2 + 0.75 * 1.2 ln 2 = 1.375 ln 2."""
    ce = make_criterion(make_config("paper", label_smoothing=0.3))
    logits = torch.tensor([[0.0, 0.0, math.log(2)]])
    for lam, expected in [(1.0, 1.9), (0.0, 1.2), (0.25, 1.375)]:
        mixed = torch.tensor([[lam, 0.0, 1 - lam]])
        assert ce(logits, mixed).item() == pytest.approx(expected * math.log(2), rel=1e-6)


# ------------------------------------------------------------------------------------------- options
def test_color_jitter_bound_is_what_torchvision_accepts():
    for j in (0.0, 2.0):
        make_config("paper", color_jitter=j)
        v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 4)
    with pytest.raises(ValueError):
        v2.ColorJitter(hue=2.01 / 4)
    with pytest.raises(UserError, match="--color-jitter"):
        make_config("paper", color_jitter=2.01)


def test_randaugment_with_autoaugment_is_an_error():
    with pytest.raises(UserError, match="randaugment and autoaugment"):
        make_config("paper", augment="crop,randaugment,autoaugment")
    assert make_config("paper", augment="crop,autoaugment").augment_ops() == ("crop", "autoaugment")


def test_warmup_is_an_option_capped_at_a_tenth_of_short_runs():
    assert make_config("paper").warmup_epochs_used() == 0  # the notebooks: no warm-up
    assert make_config("paper", warmup_epochs=5).warmup_epochs_used() == 5  # the report's text: 'a few' (5)
    assert make_config("paper", warmup_epochs=5, epochs=50).warmup_epochs_used() == 5
    assert make_config("paper", warmup_epochs=5, epochs=2).warmup_epochs_used() == pytest.approx(0.2)
    # per iteration, 2 epochs x 10 steps: warm-up 2 steps (0.05 -> 0.1), then 18 cosine steps; step 11 is half-way
    cfg = make_config("paper", epochs=2, lr=0.1, warmup_epochs=5, lr_step="iteration")
    lrs = learning_rates(cfg, steps_per_epoch=10)
    assert lrs[0] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.1)
    assert lrs[11] == pytest.approx(0.05) and lrs[19] < 0.002
    # per epoch, 10 epochs, warm-up 1 epoch (a tenth): epoch 1 at 0.1 x 1/1, then cosine over the 9 others
    lrs = learning_rates(make_config("paper", epochs=10, warmup_epochs=1), steps_per_epoch=4)
    assert lrs[:4] == [pytest.approx(0.1)] * 4 and lrs[4:8] == [pytest.approx(0.1)] * 4
    assert lrs[8] == pytest.approx(0.05 * (1 + math.cos(math.pi / 9)))


def test_lr_per_epoch_is_cosine_annealing_stepped_per_epoch_as_the_notebooks():
    """The notebooks: CosineAnnealingLR(optimizer, T_max=300), scheduler.step() once after each epoch. Ours steps
    per iteration, but each epoch's learning rate must be the same at every step of the epoch, and equal to it."""
    steps = 3
    ours = learning_rates(make_config("paper"), steps_per_epoch=steps)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300)
    original = []
    for _ in range(300):
        original.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    for epoch in (1, 150, 300):
        within = ours[(epoch - 1) * steps:epoch * steps]
        assert within == [pytest.approx(original[epoch - 1], rel=1e-9)] * steps, epoch
    assert original[0] == 0.1 and original[149] == pytest.approx(0.05 * (1 + math.cos(math.pi * 149 / 300)))
    assert max(abs(a - b) / b for a, b in zip(ours[::steps], original)) < 1e-9


# ------------------------------------------------------------------------------------------- training loop
def test_each_training_epoch_runs_in_train_mode_after_evaluation(smoke_root, tmp_path, monkeypatch, capsys):
    """Dropout, stochastic depth and batch norm are in train mode for every training step, including those
    after an evaluation; BN statistics keep moving in epoch 2; eval passes are in eval mode."""
    seen, models = [], []
    real_build = train_mod.build

    def build_and_watch(*args, **kw):
        model = real_build(*args, **kw)
        for m in model.modules():
            if type(m).__name__ in ("Dropout", "StochasticDepth", "BatchNorm2d"):
                m.register_forward_pre_hook(lambda mod, inp: seen.append((torch.is_grad_enabled(), mod.training)))
        models.append(model)
        return model

    bn_means = []
    monkeypatch.setattr(train_mod, "build", build_and_watch)
    train(tiny(smoke_root, tmp_path / "run", epochs=2, dropout=0.2, stochastic_depth_rate=0.1, progress=True),
          on_epoch=lambda row: bn_means.append(models[0].head[0].running_mean.clone()))
    first_eval = next(i for i, (grad, _) in enumerate(seen) if not grad)
    after = seen[first_eval:]
    assert any(grad for grad, _ in after), "epoch 2 trained after epoch 1's evaluation"
    assert all(training == grad for grad, training in seen)  # train mode exactly when training
    assert not torch.equal(bn_means[0], bn_means[1])
    out, err = capsys.readouterr()  # not a terminal: no progress bar, one line per epoch
    assert "\r" not in err and len([line for line in out.splitlines() if line.startswith("epoch")]) == 2


def test_best_pt_is_the_best_epochs_weights_even_after_a_crash(smoke_root, tmp_path, monkeypatch):
    """val_acc 0.3, 0.6, 0.5: best.pt must be epoch 2 with epoch 2's weights, also when the run dies between
    writing epoch 2's last.pt and its best.pt and is then resumed."""
    forced = [0.3, 0.6, 0.5]
    weights = {}
    real_evaluate = train_mod.evaluate

    def evaluate_forced(model, loader, dtype=None):
        epoch = len(weights) + 1
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        loss, _ = real_evaluate(model, loader, dtype)
        return loss, forced[epoch - 1]

    class Crash(Exception):
        pass

    real_save = checkpoint_mod.atomic_torch_save

    def save_or_crash(obj, path):
        if Path(path).name == "best.pt" and obj["epoch"] == 2:
            raise Crash  # as if killed between last.pt and best.pt
        real_save(obj, path)

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "evaluate", evaluate_forced)
    monkeypatch.setattr(checkpoint_mod, "atomic_torch_save", save_or_crash)
    with pytest.raises(Crash):
        train(tiny(smoke_root, run, epochs=3))
    # history.csv is not ahead of best.pt: both still say epoch 1
    assert [r["epoch"] for r in read_history(run)] == ["1"]
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2

    monkeypatch.setattr(checkpoint_mod, "atomic_torch_save", real_save)
    rows = []
    train(tiny(smoke_root, run, epochs=3, resume=True), on_epoch=rows.append)
    history = read_history(run)
    assert [float(r["val_acc"]) for r in history] == forced
    assert [r["epoch"] for r in rows] == [3] and float(history[2]["val_loss"]) == rows[0]["val_loss"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best_val_acc"] == 0.6
    assert all(torch.equal(best["model"][k], weights[2][k]) for k in weights[2])
    last = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.equal(last["model"][k], weights[3][k]) for k in weights[3])
    config = json.loads((run / "config.json").read_text())
    assert config["warmup_epochs_used"] == 0  # the notebooks' recipe: no warm-up
    assert config["data_official"] is None  # synthetic data


def test_a_setting_of_the_wrong_type_is_named():
    """Notebooks pass settings as Python values: a float epoch count or a string rate is a clear error."""
    with pytest.raises(UserError, match="--epochs 2.5: expected int"):
        make_config("paper", epochs=2.5)
    with pytest.raises(UserError, match="--lr 'fast': expected float"):
        make_config("paper", lr="fast")
    assert make_config("paper", warmup_epochs=2, dropout=0).warmup_epochs == 2  # an int is a fine float
