"""The original notebooks' recipe (AlperMumcular/DL-Project1) as the `paper` profile, the lambda-weighted training
accuracy, partial schedules (--stop-after-epochs, --time-limit) and what --resume refuses."""
import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.transforms import v2

import lib.train as train_mod
from lib.augment import BatchMix, train_transform
from lib.common import run_cli
from lib.config import make_config
from lib.recipe import make_criterion, make_optimizer, make_scheduler, train_step
from lib.train import train
from recipe_helpers import FixedLogits

TINY = dict(model="light_resnet18", base_channels=8, train_size=32, val_size=20, batch_size=16, device="cpu",
            num_workers=0, augment="standard", progress=False)


def cli(capsys, *args):
    try:
        code = run_cli(train_mod.main, [str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def read_history(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ recipe
def test_paper_profile_is_what_the_notebooks_ran():
    cfg = make_config("paper")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.label_smoothing, cfg.epochs) == \
        (0.1, 0.9, 5e-4, 128, 0.1, 300)
    assert cfg.mix_prob == 1.0 and cfg.mixup_alpha == cfg.cutmix_alpha == 1.0  # every batch, alpha 1 each
    assert cfg.warmup_epochs_used() == 0 and cfg.lr_step == "epoch" and cfg.val_source == "test"
    assert cfg.augment_ops() == ("crop", "flip", "randaugment")
    steps = train_transform(cfg, [0.5] * 3, [0.25] * 3).transforms
    crop, flip, rand = steps[:3]
    assert isinstance(crop, v2.RandomCrop) and crop.padding == [4, 4, 4, 4] and isinstance(flip, v2.RandomHorizontalFlip)
    default = v2.RandAugment()  # the notebooks' transforms.RandAugment(): torchvision's defaults
    assert (rand.num_ops, rand.magnitude, rand.num_magnitude_bins) == \
        (default.num_ops, default.magnitude, default.num_magnitude_bins) == (2, 9, 31)
    assert not any(isinstance(t, (v2.ColorJitter, v2.RandomRotation, v2.RandomErasing)) for t in steps)
    full = make_config("paper", augment="full").augment_ops()  # the report's prose, one preset away
    assert full == ("crop", "flip", "jitter", "rotation", "randaugment", "erasing")


def test_optimizer_decays_every_parameter():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = make_optimizer(make_config("paper"), model)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4  # BN weight/bias and biases decayed too
    assert opt.param_groups[0]["weight_decay"] == 5e-4 and opt.param_groups[0]["nesterov"]


def test_base45_recipe_is_its_notebooks_and_explicit_options_win():
    cfg = make_config("paper", model="light_resnet18_v2_b45")
    assert cfg.augment_ops() == ("crop", "flip", "autoaugment", "erasing")
    assert (cfg.erasing_prob, cfg.erasing_max_area, cfg.erasing_value) == (0.5, 0.1, "random")
    assert make_config("paper", model="light_resnet18_v2_b45", erasing_prob=0.2).erasing_prob == 0.2
    assert make_config("paper", model="light_resnet18_v2").augment_ops() == ("crop", "flip", "randaugment")


def test_random_erasing_values_and_area():
    cfg = make_config("paper", augment="erasing", erasing_prob=1.0, erasing_value="random", erasing_max_area=0.1)
    transform = train_transform(cfg, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    gray = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    erased = []
    for _ in range(200):
        out = transform(gray)
        changed = (out - (128 / 255 - 0.5) / 0.25).abs() > 1e-4
        erased.append(changed.any(0).sum().item())
    # every image erased; the box's area is U(0.02, 0.1) x 1024 before torchvision rounds height and width
    assert min(erased) > 0 and max(erased) <= 0.1 * 1024 * 1.15
    assert sum(erased) / len(erased) == pytest.approx(0.06 * 1024, rel=0.15)  # mean of U(0.02, 0.1), not 0.175
    values = torch.cat([transform(gray).flatten() for _ in range(50)])
    values = values[(values - (128 / 255 - 0.5) / 0.25).abs() > 1e-4]
    assert values.std().item() == pytest.approx(1.0, abs=0.1)  # per-pixel N(0, 1), as value='random'


def test_every_batch_is_mixed_by_default():
    torch.manual_seed(0)
    mix = BatchMix(make_config("paper"))
    x, y = torch.rand(32, 3, 32, 32), torch.arange(32) % 10
    mixed = [bool((mix(x.clone(), y)[1].max(1).values < 1).any()) for _ in range(300)]
    # CutMix's box can be clipped to nothing (lambda -> 1) in about 0.4% of its batches; MixUp never gives 1
    assert sum(mixed) / len(mixed) >= 0.98


# ------------------------------------------------------------------------------------------------ metric
def test_train_accuracy_is_lambda_weighted_as_the_notebooks():
    """Two images mixed with lam = 0.7: image 0 (y_a 1, y_b 2) predicted 2 -> 0.3; image 1 (y_a 3, y_b 3)
    predicted 3 -> 1.0; image 2 (y_a 4, y_b 5) predicted 4 -> 0.7; image 3 (y_a 6, y_b 7) predicted 0 -> 0.
    Sum 2.0 of 4 images: 50%. Dominant label (y_a, share 0.7): right for images 1 and 2 only."""
    lam = 0.7
    y_a, y_b = torch.tensor([1, 3, 4, 6]), torch.tensor([2, 3, 5, 7])
    soft = lam * nn.functional.one_hot(y_a, 10).float() + (1 - lam) * nn.functional.one_hot(y_b, 10).float()
    logits = torch.full((4, 10), -5.0)
    logits[torch.arange(4), torch.tensor([2, 3, 4, 0])] = 5.0
    model = FixedLogits(logits)
    cfg = make_config("paper")
    opt = make_optimizer(cfg, model)
    _, correct, dominant = train_step(model, torch.zeros(4, 3, 32, 32), soft, opt,
                                      make_scheduler(cfg, opt, 1), make_criterion(cfg))
    assert correct.item() == pytest.approx(2.0) and dominant.item() == 2


# ------------------------------------------------------------------------------------------------ partial runs
def test_stop_after_epochs_then_resume_equals_a_straight_run(smoke_root, tmp_path, capsys):
    common = ["--profile", "smoke", "--data-dir", smoke_root, "--model", "light_resnet18", "--base-channels", "8",
              "--train-size", "32", "--val-size", "20", "--batch-size", "16", "--device", "cpu", "--num-workers", "0",
              "--augment", "standard", "--no-progress", "--epochs", "3"]
    code, out, err = cli(capsys, *common, "--out", tmp_path / "part", "--stop-after-epochs", "2")
    assert code == 0 and "stopped after epoch 2 of 3" in err and "2 of 3 epochs" in err
    assert [r["epoch"] for r in read_history(tmp_path / "part")] == ["1", "2"]
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["epochs"] == 3 and config["stop_after_epochs"] == 2
    code, _, _ = cli(capsys, *common, "--out", tmp_path / "part", "--resume")
    assert code == 0
    code, _, _ = cli(capsys, *common, "--out", tmp_path / "straight")
    part, straight = read_history(tmp_path / "part"), read_history(tmp_path / "straight")
    assert [r["lr"] for r in part] == [r["lr"] for r in straight]  # the full schedule's learning rates
    assert [r["val_acc"] for r in part] == [r["val_acc"] for r in straight]


def test_time_limit_stops_after_the_last_epoch_that_fits(smoke_root, tmp_path, capsys, monkeypatch):
    clock = iter(range(0, 10_000, 10))  # time.monotonic: 10 s per call
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: float(next(clock)))
    cfg = make_config("smoke", **{**TINY, "data_dir": str(smoke_root), "out": str(tmp_path / "run"), "epochs": 50,
                                  "time_limit": 0.5})
    summary = train(cfg)
    # every call is 10 s later: the first epoch always runs, then each check sees at least 10 s more gone;
    # the run stops well before its 50 epochs, and what it says names the limit
    assert 1 <= summary["epochs_done"] < 50 and summary["schedule"] == f"{summary['epochs_done']} of 50 epochs"
    assert "--time-limit 0.5 minutes" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["--stop-after-epochs", "0"], "--stop-after-epochs"),
    (["--stop-after-epochs", "400", "--epochs", "300"], "--stop-after-epochs"),
    (["--time-limit", "-1"], "--time-limit"),
    (["--se-position", "sideways"], "--se-position"),
    (["--stochastic-depth-mode", "sometimes"], "--stochastic-depth-mode"),
    (["--lr-step", "weekly"], "--lr-step"),
    (["--erasing-value", "noise"], "--erasing-value"),
])
def test_bad_partial_and_model_settings_stop_before_any_file(tmp_path, capsys, args, needle):
    missing = tmp_path / "no_data_here"  # never read: the settings fail first
    code, _, err = cli(capsys, "--data-dir", missing, "--out", tmp_path / "run", "--device", "cpu", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not missing.exists()


def test_resume_refuses_a_run_of_the_earlier_models(smoke_root, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = make_config("smoke", **{**TINY, "data_dir": str(smoke_root), "out": str(run), "epochs": 3,
                                  "stop_after_epochs": 1})
    train(cfg)
    ckpt = torch.load(run / "last.pt", weights_only=True)  # made into what the earlier version wrote
    ckpt["format"] = 1
    for key in ("se_position", "stochastic_depth_mode", "init", "lr_step", "erasing_value", "erasing_max_area",
                "stop_after_epochs", "time_limit", "preact"):
        ckpt["config"].pop(key)
        ckpt["model_config"].pop(key, None)
    ckpt["config"]["mix_prob"] = 0.5
    torch.save(ckpt, run / "last.pt")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    code, _, err = cli(capsys, "--profile", "smoke", "--data-dir", smoke_root, "--out", run, "--model",
                       "light_resnet18", "--base-channels", "8", "--train-size", "32", "--val-size", "20",
                       "--batch-size", "16", "--device", "cpu", "--augment", "standard", "--epochs", "3", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "format 1" in err and "model se_position 'output' -> 'input'" in err and "--mix-prob 0.5 -> 1.0" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"} == before  # nothing written
