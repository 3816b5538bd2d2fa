"""The core modules against independent facts, each chosen so that a plausible one-line mistake gives a different
answer: hand-computed examples, numpy's statistics, PyTorch's and torchvision's reference implementations.

Data to Table 1: normalisation statistics (training pixels only), the model's initialisation and where dropout
acts, the recipe's loss, optimiser and schedule, MixUp/CutMix, flip TTA, the history's accuracies and best epoch,
Figure 1's curves and Table 1's numbers from a run whose validation accuracy goes up and down.
"""
import csv
import json
import math
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import lib.train as train_mod
from lib.augment import BatchMix
from lib.config import make_config, save_config
from lib.models import build_model, count_parameters, model_summary
from lib.predict import predict_proba
from lib.report import plot_figure1, table1
from lib.runs import load_run
from lib.recipe import make_criterion, make_optimizer, make_scheduler, train_step
from lib.train import train
from recipe_helpers import FixedLogits, learning_rates

TINY = dict(model="light_resnet18", base_channels=8, progress=False, device="cpu", num_workers=0)


def tiny_config(smoke_root, out, **kw):
    return make_config("smoke", **{**TINY, "data_dir": str(smoke_root), "out": str(out), "train_size": 100,
                                   "val_size": 50, "batch_size": 25, "epochs": 3, **kw})


def batch_images(path):
    """uint8 HWC images of one official-format batch, read with the plain unpickler (our own test data)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


class Stop(Exception):
    pass


# ------------------------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize("val_source", ["test", "holdout"])
def test_normalisation_is_numpys_per_channel_statistics_of_the_training_pixels(smoke_root, tmp_path, monkeypatch,
                                                                            val_source):
    """mean/std per channel on the [0, 1] scale over exactly the training images (never the validation ones),
    used by both loaders; numpy's own mean and (population) std."""
    seen = {}
    real_train_loader = train_mod.make_train_loader

    def train_loader(cfg, x, y, mean, std, *a, **kw):
        seen["train"] = (x, mean, std)
        return real_train_loader(cfg, x, y, mean, std, *a, **kw)

    def eval_loader(x, y, mean, std, *a, **kw):
        seen["val"] = (x, mean, std)
        raise Stop

    monkeypatch.setattr(train_mod, "make_train_loader", train_loader)
    monkeypatch.setattr(train_mod, "make_eval_loader", eval_loader)
    with pytest.raises(Stop):
        train(make_config("paper", **{**TINY, "data_dir": str(smoke_root), "out": str(tmp_path / "run"),
                                      "val_source": val_source}))

    batches = smoke_root / "cifar-10-batches-py"
    every_train = np.concatenate([batch_images(batches / f"data_batch_{i}") for i in range(1, 6)])
    test_images = batch_images(batches / "test_batch")
    train_x, mean, std = seen["train"]
    val_x = seen["val"][0]
    rows = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))  # noqa: E731 - images as a multiset
    if val_source == "test":
        assert rows(train_x) == rows(every_train) and rows(val_x) == rows(test_images)
    else:  # the held-out images come out of the training batches, and out of the statistics
        assert len(val_x) == len(every_train) // 10 and rows(np.concatenate([train_x, val_x])) == rows(every_train)
    pixels = train_x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)
    assert seen["val"][1] == mean and seen["val"][2] == std  # validation normalised with the training statistics
    # the wrong split's statistics would differ (the check above can fail)
    other = (val_x.reshape(-1, 3) / 255).mean(axis=0)
    assert np.abs(other - np.asarray(mean)).max() > 1e-4


# --------------------------------------------------------------------------------------------------- the models
def _capture(block, names):
    """Run-time tensors: the output of each named submodule and the input of each (name + '.in')."""
    got = {}
    for name in names:
        m = getattr(block, name)
        m.register_forward_hook(lambda mod, inp, out, name=name: got.update({name: out, name + ".in": inp[0]}))
    return got


@pytest.mark.parametrize("model", ["robust_resnet64", "light_resnet18"])
def test_dropout_acts_between_the_two_convolutions(model):
    """Pre-activation block: conv2's input is dropout(relu(bn2(conv1(.)))): some positive activations zeroed, the
    others scaled by 1 / (1 - p); conv1's input and the block's output carry no dropout of their own."""
    torch.manual_seed(0)
    net = build_model(model, base_channels=8, dropout=0.5, stochastic_depth_rate=0.0, se_reduction=0).train()
    block = net.groups[1][1]  # an identity-shortcut block
    got = _capture(block, ["bn1", "conv1", "bn2", "conv2"])
    x = torch.randn(4, block.conv1.in_channels, 8, 8)
    out = block(x)
    act = torch.relu(got["bn2"])
    conv2_in = got["conv2.in"]
    kept = conv2_in != 0
    assert torch.allclose(conv2_in[kept], 2 * act[kept])  # scaled by 1 / (1 - 0.5)
    dropped = (act > 0) & ~kept
    assert 0.4 < dropped.sum() / (act > 0).sum() < 0.6  # about half the positive activations dropped
    torch.testing.assert_close(got["conv1.in"], torch.relu(got["bn1"]))  # no dropout before conv1
    torch.testing.assert_close(out, got["conv2"] + x)  # nor after conv2 (no stochastic depth here)
    net.eval()
    out = block(x)
    torch.testing.assert_close(got["conv2.in"], torch.relu(got["bn2"]))  # evaluation: no dropout


def test_post_activation_block_dropout_between_the_convolutions():
    torch.manual_seed(0)
    net = build_model("light_resnet18", base_channels=8, dropout=0.5, preact=False, se_reduction=0,
                      stochastic_depth_rate=0.0).train()
    block = net.groups[1][1]
    got = _capture(block, ["conv1", "bn1", "conv2", "bn2"])
    x = torch.relu(torch.randn(4, block.conv1.in_channels, 8, 8))
    out = block(x)
    act, conv2_in = torch.relu(got["bn1"]), got["conv2.in"]
    kept = conv2_in != 0
    assert torch.allclose(conv2_in[kept], 2 * act[kept]) and ((act > 0) & ~kept).any()
    torch.testing.assert_close(out, torch.relu(got["bn2"] + x))


@pytest.mark.parametrize("p", [0.3])
def test_stochastic_depth_drops_the_branch_for_the_whole_batch(p):
    """The notebooks' stochastic depth, seen in a block's output: the whole batch gets skip or skip + branch,
    unscaled, with probability p of the former; identity at evaluation."""
    torch.manual_seed(0)
    net = build_model("robust_resnet64", base_channels=8, dropout=0.0, stochastic_depth_rate=0.5).train()
    block = net.groups[2][-1]  # the last block: drop rate = the full rate
    got = _capture(block, ["conv2"])
    x = torch.randn(2, block.conv1.in_channels, 4, 4)
    dropped = 0
    for _ in range(100):
        out = block(x)
        if torch.equal(out, x):
            dropped += 1
        else:
            torch.testing.assert_close(out, got["conv2"] + x)
    assert 0.3 < dropped / 100 < 0.7
    net.eval()
    torch.testing.assert_close(block(x), got["conv2"] + x)


def test_stochastic_depth_rates_rise_to_the_full_rate_at_the_last_block():
    """rate x (group / groups) x (block / blocks): light_resnet18 (4 groups of 2) at 0.1, by hand."""
    net = build_model("light_resnet18")
    rates = [b.drop_path.p for g in net.groups for b in g]
    assert rates == pytest.approx([0.0125, 0.025, 0.025, 0.05, 0.0375, 0.075, 0.05, 0.1])


@pytest.mark.parametrize("name", ["robust_resnet64", "light_resnet18"])
def test_kaiming_fan_out_on_convolutions_that_change_width(name):
    """kaiming_normal_(fan_out, relu): std sqrt(2 / (out_channels k k)). The stem (3 -> 32), every first conv of a
    group and the 1x1 shortcuts have fan-in != fan-out, where fan_in would give a clearly different spread."""
    torch.manual_seed(0)
    net = build_model(name)
    checked = 0
    for mname, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels != m.out_channels:
            k = m.kernel_size[0] * m.kernel_size[1]
            fan_out, fan_in = m.out_channels * k, m.in_channels * k
            std = m.weight.detach().double().std().item()
            assert std == pytest.approx(math.sqrt(2 / fan_out), rel=0.08), mname
            assert abs(std / math.sqrt(2 / fan_in) - 1) > 0.25, mname  # fan_in would be told apart
            assert abs(m.weight.mean().item()) < 0.1 * std
            checked += 1
    assert checked >= 5
    linear = net.head[-1]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.1) and not linear.bias.any()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)


def test_default_init_is_pytorchs_own():
    """init="default" leaves PyTorch's kaiming_uniform_(a=sqrt(5)): weights within +-1/sqrt(fan_in)."""
    torch.manual_seed(0)
    net = build_model("robust_resnet64", init="default")
    conv = net.stem[0]
    bound = 1 / math.sqrt(3 * 9)
    assert conv.weight.abs().max().item() <= bound and conv.weight.abs().max().item() > 0.9 * bound


# Trainable parameters of the four Table 1 models, as the original notebooks print them (independent of lib).
NOTEBOOK_PARAMETERS = {"light_resnet18": 2_811_192, "light_resnet18_v2": 4_389_826,
                       "light_resnet18_v2_b45": 4_998_947, "robust_resnet64": 3_799_978}


@pytest.mark.parametrize("name", list(NOTEBOOK_PARAMETERS))
def test_table1_architecture_columns(name):
    s = model_summary(name)
    assert s["parameters"] == NOTEBOOK_PARAMETERS[name]
    assert s["params_m"] == round(NOTEBOOK_PARAMETERS[name] / 1e6, 2)
    n_weights = sum(p.numel() for p in build_model(name).parameters())  # every parameter is trainable
    assert count_parameters(build_model(name)) == n_weights


# --------------------------------------------------------------------------------------------------- the recipe
def test_label_smoothing_is_0_1_by_hand():
    """CrossEntropy with smoothing 0.1 over 10 classes: target 0.91 on the label, 0.01 elsewhere."""
    logits = torch.tensor([[2.0] + [0.0] * 9])
    lse = math.log(math.exp(2) + 9)
    expected = -(0.91 * (2 - lse) + 0.09 * (-lse))
    loss = make_criterion(make_config("paper"))(logits, torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    soft = torch.zeros(1, 10)
    soft[0, 0] = 1.0
    assert make_criterion(make_config("paper"))(logits, soft).item() == pytest.approx(expected, rel=1e-6)


class OneWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))


def test_sgd_nesterov_momentum_and_weight_decay_by_hand():
    """Two steps of loss 0.5 w from w = 1 with lr 0.1, momentum 0.9, weight decay 5e-4, Nesterov:
    d = g + wd w; buf = 0.9 buf + d; w -= lr (d + 0.9 buf)."""
    model = OneWeight()
    opt = make_optimizer(make_config("paper"), model)
    w, buf = 1.0, None
    for _ in range(2):
        opt.zero_grad()
        (0.5 * model.w).backward()
        opt.step()
        d = 0.5 + 5e-4 * w
        buf = d if buf is None else 0.9 * buf + d
        w -= 0.1 * (d + 0.9 * buf)
        assert model.w.item() == pytest.approx(w, rel=1e-6)


@pytest.mark.parametrize("epochs,steps", [(5, 3), (7, 1)])
def test_lr_per_epoch_is_pytorchs_cosine_annealing(epochs, steps):
    """lr_step epoch: every iteration of epoch e runs at CosineAnnealingLR(T_max=epochs)'s lr after e - 1 steps."""
    cfg = make_config("paper", epochs=epochs)
    ours = make_scheduler(cfg, make_optimizer(cfg, OneWeight()), steps)
    ref_opt = torch.optim.SGD(OneWeight().parameters(), lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs)
    for _ in range(epochs):
        for _ in range(steps):
            assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
            ours.optimizer.step()
            ours.step()
        ref_opt.step()
        ref.step()


def test_lr_per_iteration_is_cosine_annealing_over_every_step():
    cfg = make_config("paper", epochs=4, lr_step="iteration")
    ours = make_scheduler(cfg, make_optimizer(cfg, OneWeight()), 5)
    ref_opt = torch.optim.SGD(OneWeight().parameters(), lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=20)
    for _ in range(20):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
        ours.optimizer.step()
        ours.step()
        ref_opt.step()
        ref.step()


def test_paper_recipe_numbers():
    """The report's recipe: 0.1 / 0.9 / 5e-4 / 128 / 300 epochs, smoothing 0.1, every batch mixed, Beta(1, 1)."""
    c = make_config("paper")
    assert (c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs) == (0.1, 0.9, 5e-4, 128, 300)
    assert (c.label_smoothing, c.mix_prob, c.mixup_alpha, c.cutmix_alpha) == (0.1, 1.0, 1.0, 1.0)
    assert (c.randaugment_ops, c.randaugment_magnitude, c.warmup_epochs, c.lr_step) == (2, 9, 0.0, "epoch")


# --------------------------------------------------------------------------------------------- MixUp / CutMix
def _classify_mix(x, xm, soft, y):
    """Per batch: 'none', 'mixup' (every pixel a lam blend of two images) or 'cutmix' (pixels copied)."""
    if torch.equal(soft, nn.functional.one_hot(y, 10).float()):
        return "none" if torch.equal(xm, x) else "?"
    return "cutmix" if torch.isin(xm, x).all() else "mixup"


def test_cutmix_lambda_is_the_share_of_pixels_kept():
    """CutMix: each image keeps 1 - box area of its own pixels; its soft target gives its label exactly that share
    (the box clipped at the border), and the pasted pixels come from the batch rolled by one."""
    torch.manual_seed(0)
    mix = BatchMix(make_config("paper", mix_prob=1.0))
    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    y = torch.arange(n)
    seen = {"cutmix": 0, "mixup": 0}
    for _ in range(60):
        xm, soft = mix(x, y)
        kind = _classify_mix(x, xm, soft, y)
        seen[kind] += 1
        own = (xm == x).float().mean(dim=(1, 2, 3))  # the share of each image's own pixels
        if kind == "cutmix":
            assert torch.allclose(soft[torch.arange(n), y], own, atol=1e-6)
            other = (y - 1) % n  # torchvision pairs each image with the previous one (roll by 1)
            assert torch.allclose(soft[torch.arange(n), other], 1 - own, atol=1e-6) or torch.all(own == 1)
        else:
            lam = soft[0, 0].item()
            assert torch.allclose(xm, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-5)
        assert torch.allclose(soft.sum(1), torch.ones(n))
    assert seen["cutmix"] > 15 and seen["mixup"] > 15  # 50/50


@pytest.mark.parametrize("p,low,high", [(1.0, 400, 400), (0.5, 160, 240), (0.0, 0, 0)])
def test_mix_probability(p, low, high):
    torch.manual_seed(1)
    mix = BatchMix(make_config("paper", mix_prob=p))
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    mixed = sum(not torch.equal(mix(x, y)[1], nn.functional.one_hot(y, 10).float()) for _ in range(400))
    assert low <= mixed <= high


# ------------------------------------------------------------------------------------------- training accuracy
def test_train_accuracy_credits_the_minority_labels_share():
    """One image mixed 0.7 cat / 0.3 dog, the model predicts dog: lambda-weighted accuracy 0.3, dominant 0."""
    soft = torch.zeros(1, 10)
    soft[0, 3], soft[0, 5] = 0.7, 0.3
    logits = torch.zeros(1, 10)
    logits[0, 5] = 4.0
    cfg = make_config("paper")
    model = FixedLogits(logits)
    opt = make_optimizer(cfg, model)
    _, correct, dominant = train_step(model, torch.zeros(1, 3, 32, 32), soft, opt, make_scheduler(cfg, opt, 1),
                                      make_criterion(cfg))
    assert correct.item() == pytest.approx(0.3) and dominant.item() == 0
    logits[0] = 0
    logits[0, 3] = 4.0
    _, correct, dominant = train_step(model, torch.zeros(1, 3, 32, 32), soft, opt, make_scheduler(cfg, opt, 1),
                                      make_criterion(cfg))
    assert correct.item() == pytest.approx(0.7) and dominant.item() == 1


def test_history_accuracies_and_best_epoch_from_a_non_monotonic_run(smoke_root, tmp_path, monkeypatch):
    """Per-step results (0.3 of each image right, dominant label never) and validation accuracies 0.5, 0.8, 0.7
    reach history.csv as they are: train_acc 0.3, train_acc_dominant 0, best_val_acc the running maximum, and
    best.pt holds epoch 2."""
    def fake_step(model, x, soft_y, optimizer, scheduler, criterion, *a, **kw):
        optimizer.step()  # no gradients: nothing moves, but the schedule advances as in train_step
        scheduler.step()
        n = len(x)
        return torch.tensor(1.5), torch.tensor(0.3 * n), torch.tensor(0)

    accs = iter([0.5, 0.8, 0.7])
    monkeypatch.setattr(train_mod, "train_step", fake_step)
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **kw: (2.0, next(accs)))
    run = tmp_path / "run"
    summary = train(tiny_config(smoke_root, run))
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "train_acc_dominant", "val_loss", "val_acc",
                             "best_val_acc", "epoch_seconds"]
    assert [float(r["train_acc"]) for r in rows] == pytest.approx([0.3] * 3)
    assert [float(r["train_acc_dominant"]) for r in rows] == [0.0] * 3
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([1.5] * 3)
    assert [float(r["val_acc"]) for r in rows] == [0.5, 0.8, 0.7]
    assert [float(r["best_val_acc"]) for r in rows] == [0.5, 0.8, 0.8]
    # lr column: CosineAnnealingLR(T_max=3) per epoch from 0.1 (the smoke profile's lr, whatever it is)
    lr0 = float(rows[0]["lr"])
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr0, lr0 * 0.75, lr0 * 0.25])
    assert summary["best_val_acc"] == 0.8 and summary["epochs_done"] == 3
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best_val_acc"] == 0.8
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["best_val_acc"] == 0.8 and last["best_epoch"] == 2


# ------------------------------------------------------------------------------------------------ flip TTA
class LeftMinusRight(nn.Module):
    """Two classes; logits [s + 1, -s] with s = mean(left half) - mean(right half) of channel 0."""

    config = {"num_classes": 2}

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        s = x[:, 0, :, :16].mean((1, 2)) - x[:, 0, :, 16:].mean((1, 2))
        return torch.stack([s + 1, -s], dim=1) * self.w


def test_flip_tta_is_the_mean_of_two_softmaxes_by_hand():
    """White left half, black right half, normalised with mean 0.5 / std 0.5: s = 2, logits [3, -2] (p0 =
    1 / (1 + e^-5)); flipped horizontally s = -2, logits [-1, 2] (p0 = 1 / (1 + e^3)). A top/bottom image is
    unchanged by the flip."""
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[0, :, :16] = 255
    img[1, :16, :] = 255  # top half white: s = 0 both ways
    model = LeftMinusRight()
    p = predict_proba(model, img, [0.5] * 3, [0.5] * 3, tta=True, device="cpu")
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert p[0, 0] == pytest.approx((sig(5) + sig(-3)) / 2, rel=1e-5)
    assert p[1, 0] == pytest.approx(sig(1), rel=1e-5)
    single = predict_proba(model, img, [0.5] * 3, [0.5] * 3, tta=False, device="cpu", batch_size=1)
    assert single[0, 0] == pytest.approx(sig(5), rel=1e-5) and single[1, 0] == pytest.approx(sig(1), rel=1e-5)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)



def test_predict_proba_uses_flip_tta_unless_told_not_to():
    """The report's inference is two-pass: by default the left-white image gets (sig(5) + sig(-3)) / 2."""
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, :, :16] = 255
    p = predict_proba(LeftMinusRight(), img, [0.5] * 3, [0.5] * 3)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert p[0, 0] == pytest.approx((sig(5) + sig(-3)) / 2, rel=1e-5)
    none = predict_proba(LeftMinusRight(), img[:0], [0.5] * 3, [0.5] * 3)  # no images: float32 like the rest
    assert none.shape == (0, 2) and none.dtype == np.float32

# ------------------------------------------------------------------------------------------- Figure 1, Table 1
def real_run(run_dir, model, val_accs, train_accs):
    """A finished paper-profile run (300 epochs) on official CIFAR-10 as lib.train records it (config.json +
    history.csv), its last epochs' accuracies given (the earlier ones 0.3 and 0.2)."""
    val_accs, train_accs = [0.3] * (300 - len(val_accs)) + val_accs, [0.2] * (300 - len(train_accs)) + train_accs
    cfg = make_config("paper", model=model, out=str(run_dir))
    built = build_model(model)
    save_config(cfg, run_dir / "config.json", extra={
        "model_config": built.config, "parameters": count_parameters(built), "data_source": "cifar10",
        "data_description": "CIFAR-10", "data_official": True, "n_train": 50000, "n_val": 10000,
        "amp_dtype": "bfloat16", "device_name": "GPU", "world_size": 1})
    val = pd.Series(val_accs, dtype=float)
    pd.DataFrame({"epoch": range(1, len(val) + 1), "lr": 0.1, "train_loss": 1.0, "train_acc": train_accs,
                  "train_acc_dominant": [0.01] * len(val), "val_loss": 1.0, "val_acc": val,
                  "best_val_acc": val.cummax(), "epoch_seconds": 1.0}).to_csv(run_dir / "history.csv", index=False)
    return load_run(run_dir)


def test_table1_and_figure1_from_a_run_that_goes_up_and_down(tmp_path):
    """Validation 50, 80, 70, 75 %: Table 1's best is 80.00 and final 75.00; Figure 1's blue curve is the best
    so far (50, 80, 80, 80), its green curve the lambda-weighted training accuracy, over epochs 1..300."""
    (tmp_path / "r").mkdir()
    run = real_run(tmp_path / "r", "robust_resnet64", [0.5, 0.8, 0.7, 0.75], [0.4, 0.6, 0.65, 0.55])
    assert run.is_real and run.best_val_acc == 0.8 and run.final_val_acc == 0.75
    table = table1([run])
    row = table[table["Model"] == "RobustResNet64"].iloc[0]
    assert (row["Best Val Acc (%)"], row["Final Val Acc (%)"]) == ("80.00", "75.00")
    assert row["#Params (M)"] == "3.80" and row["N"] == "3" and row["C"] == "32, 64, 128"
    others = table[table["Model"] != "RobustResNet64"]
    assert (others["Best Val Acc (%)"] == "no run yet").all()

    fig = plot_figure1(run)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    green = [line for line in lines.values() if line.get_color() == "green" and line.get_linestyle() == "-"]
    blue = [line for line in lines.values() if line.get_color() == "blue" and line.get_linestyle() == "-"]
    assert len(green) == 1 and len(blue) == 1
    assert list(green[0].get_xdata()) == list(range(1, 301)) == list(blue[0].get_xdata())
    np.testing.assert_allclose(green[0].get_ydata()[-5:], [20, 40, 60, 65, 55])
    np.testing.assert_allclose(blue[0].get_ydata()[-5:], [30, 50, 80, 80, 80])
    assert "80.00%" in blue[0].get_label()


def test_history_rows_out_of_order_are_plotted_by_epoch(tmp_path):
    (tmp_path / "r").mkdir()
    run = real_run(tmp_path / "r", "robust_resnet64", [0.5, 0.8, 0.7], [0.1, 0.2, 0.3])
    h = run.history
    h.iloc[::-1].to_csv(tmp_path / "r" / "history.csv", index=False)  # rows in reverse order
    run = load_run(tmp_path / "r")
    assert run.final_val_acc == 0.7 and run.best_val_acc == 0.8 and run.is_real
    fig = plot_figure1(run)
    green = [line for line in fig.axes[0].lines if line.get_color() == "green" and line.get_linestyle() == "-"][0]
    assert list(green.get_xdata()) == list(range(1, 301))
    np.testing.assert_allclose(green.get_ydata()[-4:], [20, 10, 20, 30])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["epochs"] == 300


# ----------------------------------------------------------------------------------------- one-line messages
def test_checkpoint_errors_are_one_line_of_at_most_200_characters_of_text():
    from lib.checkpoint import _one_line
    assert _one_line(ValueError("a" * 300)) == "ValueError: " + "a" * 200 + "..."
    assert _one_line(ValueError("a" * 200)) == "ValueError: " + "a" * 200
    assert _one_line(RuntimeError("size\n   mismatch\tfor  w")) == "RuntimeError: size mismatch for w"
    assert _one_line(KeyError()) == "KeyError: KeyError"


# ---------------------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_holdout_fraction_outside_0_1_is_refused_by_name(fraction):
    from lib.data import stratified_holdout
    with pytest.raises(ValueError, match=rf"holdout fraction must be in \(0, 1\), got {fraction}"):
        stratified_holdout(np.arange(100) % 10, fraction)


def test_holdout_takes_round_fraction_of_each_class():
    """0.25 of 10 images per class = 2.5, rounded to 2 (banker's) per class: 20 held out of 100."""
    from lib.data import stratified_holdout
    labels = np.arange(100) % 10
    train_idx, val_idx = stratified_holdout(labels, 0.25)
    assert len(val_idx) == 20 and np.bincount(labels[val_idx]).tolist() == [2] * 10
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(100))
    assert list(val_idx) == sorted(val_idx)
    train_idx, val_idx = stratified_holdout(labels, 0.35)  # 3.5 -> 4 per class
    assert np.bincount(labels[val_idx]).tolist() == [4] * 10


@pytest.mark.parametrize("size,message", [(0, "subset size must be positive, got 0"),
                                          (101, "101 requested but only 100 images are available")])
def test_subset_size_errors(size, message):
    from lib.data import balanced_subset
    with pytest.raises(ValueError, match=message):
        balanced_subset(np.arange(100) % 10, size)


def test_balanced_subset_shares_by_hand():
    """23 of 10 classes: every class 2, three classes 3; an uneven class that cannot give its share is named."""
    from lib.data import balanced_subset
    labels = np.arange(100) % 10
    idx = balanced_subset(labels, 23)
    counts = np.bincount(labels[idx], minlength=10)
    assert sorted(counts.tolist()) == [2] * 7 + [3] * 3 and len(set(idx.tolist())) == 23
    assert balanced_subset(labels, 100).tolist() == list(range(100))
    with pytest.raises(ValueError, match="class 9 has 1 images, 2 needed for a balanced 20"):
        balanced_subset(np.array([*range(9)] * 3 + [9]), 20)


# ------------------------------------------------------------------------------------------------ lib.common
def test_atomic_path_gives_umask_permissions_and_leaves_nothing_on_failure(tmp_path):
    import os

    from lib.common import atomic_path, atomic_write_text
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new" / "a.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "a.txt").read_text() == "hello"
    assert (tmp_path / "new" / "a.txt").stat().st_mode & 0o777 == 0o640  # 0666 less the umask 027
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new" / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert (tmp_path / "new" / "a.txt").read_text() == "hello" and sorted(os.listdir(tmp_path / "new")) == ["a.txt"]


def test_resolve_device_and_seed_everything():
    import random

    from lib.common import UserError, resolve_device, seed_everything
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == resolve_device() == expected
    with pytest.raises(UserError, match=r"--device 'tpu': expected auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError) as err:
            resolve_device("cuda")
        assert str(err.value) == "--device cuda: no CUDA device is available (use --device cpu or auto)"
    draws = []
    for _ in range(2):
        seed_everything(2**32 + 5)  # numpy takes the seed modulo 2**32
        draws.append((random.random(), np.random.rand(), torch.rand(()).item()))
    assert draws[0] == draws[1]
    random.seed(2**32 + 5)
    np.random.seed(5)
    torch.manual_seed(2**32 + 5)
    assert draws[0] == (random.random(), np.random.rand(), torch.rand(()).item())


def test_run_cli_exit_codes(capsys):
    from lib.common import ArgumentParser, UserError, run_cli

    def fails(argv):
        raise UserError("data: no such file")

    def interrupted(argv):
        exc = KeyboardInterrupt()
        exc.exit_code = 143
        raise exc

    assert run_cli(fails) == 2 and capsys.readouterr().err == "error: data: no such file\n"
    assert run_cli(lambda argv: None) == 0 and run_cli(lambda argv: 3) == 3
    assert run_cli(interrupted) == 143

    def ctrl_c(argv):
        raise KeyboardInterrupt
    assert run_cli(ctrl_c) == 130 and capsys.readouterr().err.endswith("interrupted\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda argv: 1 / 0)
    parser = ArgumentParser(prog="lib.x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "a"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "lib.x: error: argument --n: invalid int value: 'a'\n"


def test_load_model_rebuilds_the_weights_in_eval_mode_on_the_cpu_by_default(tmp_path):
    from lib.checkpoint import load_model
    torch.manual_seed(0)
    model = build_model("light_resnet18", base_channels=8)
    torch.save({"format": 2, "config": {}, "model_config": model.config, "epoch": 1, "model": model.state_dict(),
                "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}, tmp_path / "best.pt")
    loaded, ckpt = load_model(tmp_path / "best.pt")
    assert not loaded.training and ckpt["epoch"] == 1
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------- the batch layout
def _write(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def test_official_rows_are_r_then_g_then_b_planes_row_major(tmp_path):
    """Row layout (the CIFAR-10 page): 1024 red values, 1024 green, 1024 blue, each plane row by row. Pixel (y, x)
    of channel c is row[c * 1024 + 32 * y + x]: with distinct values per position the image is fixed by hand."""
    from lib.sources.pickles import read_batch
    row = np.arange(3072) % 251  # position-dependent values 0..250
    labels = [9, 0]
    x, y = read_batch(_write(tmp_path / "b", {b"data": np.stack([row, row[::-1]]).astype(np.uint8),
                                               b"labels": labels}))
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8 and y.tolist() == [9, 0] and y.dtype == np.int64
    for c, yy, xx in [(0, 0, 1), (1, 0, 0), (2, 5, 7), (0, 31, 2), (2, 31, 31)]:
        assert x[0, yy, xx, c] == (c * 1024 + 32 * yy + xx) % 251
        assert x[1, yy, xx, c] == (3071 - (c * 1024 + 32 * yy + xx)) % 251


@pytest.mark.parametrize("labels,needle", [([10, 0], "labels span 0..10; expected 0..9"),
                                           ([-1, 0], "labels span -1..0; expected 0..9"),
                                           ([0], r"\(1,\) labels for 2 images"),
                                           ([0.0, 1.0], "labels have dtype float64")])
def test_labels_outside_0_9_are_refused(tmp_path, labels, needle):
    from lib.common import UserError
    from lib.sources.pickles import read_batch
    path = _write(tmp_path / "b", {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
    with pytest.raises(UserError, match=needle):
        read_batch(path)


@pytest.mark.parametrize("value,ok", [(255, True), (0, True), (256, False), (-1, False)])
def test_integer_pixels_must_fit_a_byte(tmp_path, value, ok):
    from lib.common import UserError
    from lib.sources.pickles import read_batch
    data = np.zeros((1, 3072), np.int64)
    data[0, 5] = value
    path = _write(tmp_path / "b", {b"data": data, b"labels": [1]})
    if ok:
        assert read_batch(path)[0][0, 0, 5, 0] == value
    else:
        with pytest.raises(UserError, match=rf"pixel values span {min(value, 0)}..{max(value, 0)}; expected 0..255"):
            read_batch(path)


# ------------------------------------------------------------------------------------------ Kaggle pickle ids
def _kaggle(tmp_path, ids, n=None):
    n = len(ids) if n is None else n
    return _write(tmp_path / "k.pkl", {"data": np.zeros((n, 3072), np.uint8), "ids": ids})


def test_kaggle_ids_python2_strings_and_integer_width(tmp_path):
    from lib.data import load_kaggle_test
    _, ids = load_kaggle_test(_kaggle(tmp_path, np.array([b"img1", b"img2"])))
    assert ids.tolist() == ["img1", "img2"] and ids.dtype.kind == "U"
    _, ids = load_kaggle_test(_kaggle(tmp_path, np.array([7, 3], np.int32)))
    assert ids.tolist() == [7, 3] and ids.dtype == np.int64


@pytest.mark.parametrize("ids,needle", [
    (np.array([1.0, 2.0]), r"ids must be a flat list of integers or strings, got float64 \(2,\)"),
    (np.array([[1], [2]]), r"ids must be a flat list of integers or strings, got int64 \(2, 1\)"),
    (np.repeat(np.arange(1, 8), 2), r"duplicate ids, e\.g\. 1, 2, 3, 4, 5$")])
def test_kaggle_ids_refused(tmp_path, ids, needle):
    from lib.common import UserError
    from lib.data import load_kaggle_test
    with pytest.raises(UserError, match=needle):
        load_kaggle_test(_kaggle(tmp_path, ids, n=len(ids)))


# ------------------------------------------------------------------------------------------ checkpoint reader
def _ckpt(tmp_path, name="c.pt", **changes):
    model = build_model("light_resnet18", base_channels=8)
    ckpt = {"format": 2, "config": {"lr": 0.1}, "model_config": model.config, "epoch": 1,
            "model": model.state_dict(), "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, **changes}
    torch.save({k: v for k, v in ckpt.items() if v is not None}, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("changes,resume,needle", [
    ({}, True, "not a lib.train checkpoint (missing optimizer, scheduler, history, best_val_acc)"),
    ({"format": 99}, False, "checkpoint format 99 is not supported (expected 1 or 2)"),
    ({"config": [1]}, False, "not a lib.train checkpoint (config, model_config and model must be dicts)"),
    ({"model": [1]}, False, "not a lib.train checkpoint (config, model_config and model must be dicts)"),
    ({"model_config": "x"}, False, "not a lib.train checkpoint (config, model_config and model must be dicts)"),
    ({"epoch": None}, False, "not a lib.train checkpoint (missing epoch)")])
def test_checkpoint_reader_messages(tmp_path, changes, resume, needle):
    from lib.checkpoint import read_checkpoint
    from lib.common import UserError
    path = _ckpt(tmp_path, **changes)
    with pytest.raises(UserError) as err:
        read_checkpoint(path, resume=resume)
    assert str(err.value) == f"{path}: {needle}"


def test_checkpoint_reader_messages_for_files(tmp_path):
    from lib.checkpoint import load_model, read_checkpoint
    from lib.common import UserError
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "none.pt")
    assert str(err.value) == f"{tmp_path / 'none.pt'}: no such checkpoint file"
    torch.save(torch.zeros(2), tmp_path / "t.pt")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "t.pt")
    assert str(err.value) == f"{tmp_path / 't.pt'}: not a lib.train checkpoint (holds a Tensor, expected a dict)"
    (tmp_path / "junk.pt").write_bytes(b"junk\n")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "junk.pt")
    message = str(err.value)  # the loader's own error, named (its wording varies between torch versions)
    assert message.startswith(f"{tmp_path / 'junk.pt'}: not a readable PyTorch checkpoint (")
    assert re.search(r"\((\w+Error): \S.*\)$", message) and "NoneType" not in message
    wide = build_model("light_resnet18", base_channels=16)
    path = _ckpt(tmp_path, "misfit.pt", model=wide.state_dict())
    with pytest.raises(UserError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: weights do not fit the stored model config (RuntimeError: Error")
    assert read_checkpoint(_ckpt(tmp_path, "r.pt", optimizer={}, scheduler={}, history=[], best_val_acc=0.5),
                           resume=True)["best_val_acc"] == 0.5


def test_format_1_checkpoints_read_as_the_models_they_were(tmp_path):
    """Format 1 (before these options existed): SE on the output, per-sample stochastic depth, PyTorch's init;
    se_reduction None meant no SE; the recipe's later settings take their earlier values; None settings dropped."""
    from lib.checkpoint import read_checkpoint
    model = build_model("light_resnet18", base_channels=8, se_reduction=0)
    old_config = {k: v for k, v in model.config.items() if k not in ("se_position", "stochastic_depth_mode", "init")}
    path = _ckpt(tmp_path, format=1, model_config={**old_config, "se_reduction": None},
                 config={"lr": 0.05, "dropout": None})
    ckpt = read_checkpoint(path)
    assert ckpt["model_config"] == {**old_config, "se_reduction": 0, "se_position": "output",
                                    "stochastic_depth_mode": "row", "init": "default"}
    assert ckpt["config"] == {"lr": 0.05, "lr_step": "iteration", "erasing_max_area": 0.33, "erasing_value": "zero"}
    current = read_checkpoint(_ckpt(tmp_path, "two.pt", config={"lr": 0.05, "dropout": None}))
    assert current["config"] == {"lr": 0.05, "dropout": None} and current["model_config"] == model.config | {
        "se_reduction": 16}


@pytest.mark.parametrize("obj,needle", [([1, 2], "expected a dict (with 'data', ...), got list"),
                                        ({b"labels": [1], "x": 2}, "no 'data' entry (keys: labels, x)"),
                                        ({}, "no 'data' entry (keys: none)"),
                                        ({b"data": np.zeros((1, 3072), np.uint8)}, "no 'labels' entry (keys: data)")])
def test_batch_without_its_entries_is_named(tmp_path, obj, needle):
    from lib.common import UserError
    from lib.sources.pickles import read_batch
    path = _write(tmp_path / "data_batch_1", obj)
    with pytest.raises(UserError) as err:
        read_batch(path)
    assert str(err.value) == f"{path}: {needle}"


# ------------------------------------------------------------------------------------------- original logs
def test_original_log_fields_and_an_empty_log(tmp_path):
    from lib.common import UserError
    from lib.sources.original_logs import original_log
    log = original_log("robust_resnet64")
    assert log.model == "robust_resnet64" and log.citation.endswith(", 0.87709 - Best Model/0_87709.ipynb")
    assert "AlperMumcular/DL-Project1" in log.citation
    (tmp_path / "original_robust_resnet64.csv").write_text("epoch,train_loss,approx_train_acc,val_acc\n"
                                                          "2,1.5,0.4,0.6\n1,2.0,0.3,0.5\n")
    h = original_log("robust_resnet64", tmp_path).history
    assert h.loc[0, "epoch"] == 1 and h.loc[1, "epoch"] == 2  # sorted by epoch and renumbered
    (tmp_path / "original_robust_resnet64.csv").write_text("epoch,train_loss,approx_train_acc,val_acc\n")
    with pytest.raises(UserError, match=r"not an original log \(missing column\(s\) none, 0 rows\)"):
        original_log("robust_resnet64", tmp_path)


def test_training_batches_take_only_the_official_rows(tmp_path):
    """HWC arrays are a Kaggle-pickle layout only: a training batch holding one is refused by name."""
    from lib.common import UserError
    from lib.sources.pickles import read_batch, restricted_load
    path = _write(tmp_path / "data_batch_1", {b"data": np.zeros((2, 32, 32, 3), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError) as err:
        read_batch(path)
    assert str(err.value) == f"{path}: image data has shape 2 x 32 x 32 x 3; expected N x 3072"
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00a\xff.")
    with pytest.raises(UserError, match=r"bad\.pkl: not a readable pickle \(UnpicklingError: "):
        restricted_load(tmp_path / "bad.pkl")


def test_a_numbered_cuda_device_without_cuda_is_one_line(monkeypatch):
    from lib.common import UserError, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^--device cuda:1: no CUDA device is available"):
        resolve_device("cuda:1")


def test_warmup_rises_linearly_then_cosine_reaches_zero_at_the_last_step():
    """Warm-up by hand. Per iteration: 20 epochs x 4 steps, warm-up 2 epochs = W = 8 steps rising linearly from
    lr / 8 (step 0) to lr (step 8), then cosine over the other 72 steps. Per epoch: W = 2 epochs at lr / 2 and lr,
    then cosine over the other 18 epochs, constant within each epoch."""
    it = learning_rates(make_config("paper", epochs=20, lr=0.1, warmup_epochs=2, lr_step="iteration"), 4)
    for t in range(8):
        assert it[t] == pytest.approx(0.1 * (1 / 8 + t * (1 - 1 / 8) / 8)), t  # 0.0125, 0.0234375, ...
    assert it[7] == pytest.approx(0.1 * 57 / 64)
    for t in range(8, 80):
        assert it[t] == pytest.approx(0.05 * (1 + math.cos(math.pi * (t - 8) / 72))), t
    ep = learning_rates(make_config("paper", epochs=20, lr=0.1, warmup_epochs=2), 4)
    assert ep[:4] == [pytest.approx(0.05)] * 4 and ep[4:8] == [pytest.approx(0.1)] * 4
    for e in range(2, 20):
        assert ep[4 * e:4 * e + 4] == [pytest.approx(0.05 * (1 + math.cos(math.pi * (e - 2) / 18)))] * 4, e


def test_a_one_epoch_schedule_runs_at_the_peak_lr():
    # cosine over one epoch: epoch 1 is its first point, 0.5 (1 + cos 0) = 1
    cfg = make_config("paper", epochs=1, lr=0.1)
    opt = make_optimizer(cfg, OneWeight())
    sched = make_scheduler(cfg, opt, 3)
    for _ in range(3):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
        opt.step()
        sched.step()
