"""lib.analysis (analyze, corruptions, plots) on smoke data: the files, the numbers they hold, the corruptions."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lib.analysis.analyze import (apply_temperature, expected_calibration_error, fit_temperature, main, nll,
                         write_analysis)
from lib.common import run_cli
from lib.config import make_config
from lib.analysis.corruptions import CONSTANTS, CORRUPTIONS, corrupt
from lib.data import META, TEST_BATCH, load_cifar10
from lib.sources.official import CIFAR10_CLASSES
from lib.sources.pickles import SMOKE_MARKER
from lib.analysis.plots import augmentation_grid
from lib.predict import evaluate
from lib.train import train

FILES = {"metrics.json", "predictions.npz", "per_class.csv", "confusion.csv", "confusion.png", "per_class.png",
         "reliability.png", "corruptions.csv", "corruptions.png", "mistakes.png"}
CLI_CORRUPTIONS, CLI_SEVERITIES = ["gaussian_noise", "contrast"], [1, 5]


@pytest.fixture(scope="module")
def run_dir(smoke_root, tmp_path_factory) -> Path:
    """A tiny run: one epoch of a narrow LightResNet18 on 64 smoke images, validated on 40."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(make_config("smoke", model="light_resnet18", base_channels=8, epochs=1, train_size=64, val_size=40,
                      batch_size=16, data_dir=str(smoke_root), out=str(out), progress=False, device="cpu"))
    return out


@pytest.fixture(scope="module")
def analysis(run_dir, smoke_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "out"
    argv = ["--checkpoint", str(run_dir / "best.pt"), "--data-dir", str(smoke_root), "--out", str(out),
            "--corruptions", ",".join(CLI_CORRUPTIONS), "--severities", ",".join(map(str, CLI_SEVERITIES)),
            "--device", "cpu"]
    assert run_cli(main, argv) == 0
    return out


@pytest.fixture(scope="module")
def images(smoke_root) -> np.ndarray:
    return load_cifar10(smoke_root).test_x[:8]


def ece_by_hand(probs, labels, n_bins=15) -> float:
    """ECE as a plain loop over bins (lower, upper], independent of lib.analysis.analyze's vectorised version."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lower, upper = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(labels)) if lower < conf[i] <= upper]
        if members:
            acc = sum(pred[i] == labels[i] for i in members) / len(members)
            total += len(members) / len(labels) * abs(acc - sum(conf[i] for i in members) / len(members))
    return total


# ----------------------------------------------------------------------------------------------------------
# The CLI's files
# ----------------------------------------------------------------------------------------------------------
def test_every_file_is_written(analysis):
    assert {p.name for p in analysis.iterdir()} == FILES
    assert all((analysis / name).stat().st_size > 0 for name in FILES)
    assert not list(analysis.parent.glob(".out.*")), "the temporary folder is gone"
    confusion = pd.read_csv(analysis / "confusion.csv", index_col=0)
    assert list(confusion.index) == list(confusion.columns) == list(CIFAR10_CLASSES)
    assert confusion.to_numpy().sum() == 40
    per_class = pd.read_csv(analysis / "per_class.csv")
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]
    assert per_class["support"].tolist() == confusion.sum(axis=1).tolist() == [4] * 10  # the balanced 40
    corruptions = pd.read_csv(analysis / "corruptions.csv")
    assert [tuple(r) for r in corruptions[["corruption", "severity"]].to_numpy()] == \
        [(c, s) for c in CLI_CORRUPTIONS for s in CLI_SEVERITIES]
    assert corruptions["accuracy"].between(0, 1).all()


def test_metrics_agree_with_the_predictions(analysis, run_dir, smoke_root):
    metrics = json.loads((analysis / "metrics.json").read_text())
    saved = np.load(analysis / "predictions.npz")
    probs, labels = saved["probs"], saved["labels"]
    assert probs.shape == (40, 10) and metrics["n"] == len(labels) == 40
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert metrics["accuracy"] == np.mean(probs.argmax(1) == labels)
    assert metrics["ece"] == pytest.approx(ece_by_hand(probs, labels), abs=1e-6)
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(40), labels])), rel=1e-6)
    # the same checkpoint and split through lib.predict's own evaluation
    reference = evaluate(run_dir / "best.pt", smoke_root, device="cpu")
    assert metrics["accuracy"] == reference["val_acc"] and metrics["accuracy_tta"] == reference["val_acc_tta"]
    assert metrics["checkpoint_epoch"] == 1 and metrics["data_source"] == "synthetic"
    assert "official test batch" in metrics["data"] and metrics["split"]["val_size"] == 40


def test_temperature_never_raises_the_nll_it_was_fitted_on(analysis):
    metrics = json.loads((analysis / "metrics.json").read_text())
    saved = np.load(analysis / "predictions.npz")
    fit, probs, labels = saved["temperature_fit"], saved["probs"], saved["labels"]
    assert fit.sum() == 20  # half of the 40, the other half judges the temperature
    scaled = torch.softmax(torch.log(torch.tensor(probs[fit], dtype=torch.float64)) / metrics["temperature"], 1)
    after = torch.nn.functional.nll_loss(torch.log(scaled), torch.tensor(labels[fit])).item()
    assert after <= nll(probs[fit], labels[fit]) + 1e-9
    held = ~fit
    assert metrics["ece_after_temperature"] == pytest.approx(
        ece_by_hand(apply_temperature(probs[held], metrics["temperature"]), labels[held]), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_fit_temperature_never_raises_the_nll(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, rng.uniform(0.5, 8), (200, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 10, 200)
    assert nll(apply_temperature(probs, fit_temperature(probs, labels)), labels) <= nll(probs, labels) + 1e-12


def test_fit_temperature_recovers_a_known_overconfidence():
    """Labels drawn from softmax(z), the model reports softmax(2.5 z): the fitted temperature is about 2.5."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (5000, 10))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=p) for p in true_p])
    reported = np.exp(2.5 * z) / np.exp(2.5 * z).sum(1, keepdims=True)
    assert fit_temperature(reported, labels) == pytest.approx(2.5, rel=0.1)


def test_ece_and_nll_on_a_hand_computed_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.35, 0.65]])
    labels = np.array([0, 1, 1, 0])
    # bins of width 1/15: {0.9, 0.9} accuracy 1/2, {0.7} accuracy 1, {0.65} accuracy 0
    assert expected_calibration_error(probs, labels) == pytest.approx(
        2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.65))  # = 0.4375
    assert nll(probs, labels) == pytest.approx(-(np.log(0.9) + np.log(0.1) + np.log(0.7) + np.log(0.35)) / 4)


# ----------------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming it, nothing in OUT_DIR
# ----------------------------------------------------------------------------------------------------------
def _fails(argv, capsys, expect: str, out: Path):
    try:
        code = run_cli(main, argv)
    except SystemExit as exc:  # argparse's own exit for a bad option
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()


@pytest.mark.parametrize("option, value, expect", [
    ("--corruptions", "gaussian_noise,fog", "fog"),
    ("--severities", "1,6", "severity 6 is outside 1..5"),
    ("--severities", "0", "severity 0 is outside 1..5"),
    ("--severities", "one", "'one'"),
])
def test_bad_options_are_named_before_any_file_is_read(tmp_path, capsys, option, value, expect):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "no_such.pt"), "--out", str(out), option, value]
    _fails(argv, capsys, expect, out)  # the missing checkpoint is never reached


def test_missing_and_foreign_checkpoints(tmp_path, capsys, smoke_root):
    out = tmp_path / "out"
    _fails(["--checkpoint", str(tmp_path / "no_such.pt"), "--data-dir", str(smoke_root), "--out", str(out)],
           capsys, "no_such.pt", out)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    _fails(["--checkpoint", str(foreign), "--data-dir", str(smoke_root), "--out", str(out)],
           capsys, "not a lib.train checkpoint", out)


def test_data_without_the_runs_split(run_dir, smoke_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(smoke_root / "cifar-10-batches-py", data / "cifar-10-batches-py")
    (data / "cifar-10-batches-py" / TEST_BATCH).unlink()  # the run validated on the test batch
    out = tmp_path / "out"
    _fails(["--checkpoint", str(run_dir), "--data-dir", str(data), "--out", str(out), "--corruptions", "none"],
           capsys, TEST_BATCH, out)


def test_data_other_than_the_runs_is_refused(run_dir, smoke_root, tmp_path, capsys):
    """The smoke run's split rebuilt from a copy that reads as CIFAR-10 (no synthetic marker): other data."""
    data = tmp_path / "data"
    shutil.copytree(smoke_root / "cifar-10-batches-py", data / "cifar-10-batches-py")
    meta_path = data / "cifar-10-batches-py" / META
    meta = pickle.loads(meta_path.read_bytes(), encoding="bytes")
    del meta[SMOKE_MARKER.encode()]
    meta_path.write_bytes(pickle.dumps(meta, protocol=2))
    out = tmp_path / "out"
    _fails(["--checkpoint", str(run_dir), "--data-dir", str(data), "--out", str(out), "--corruptions", "none"],
           capsys, "validated on synthetic data, this split is cifar10 data", out)


def test_download_fetches_the_data_a_new_runtime_lacks(run_dir, smoke_root, tmp_path, capsys, monkeypatch):
    """--download (notebook 06's `download`): the official archive (here a tar.gz of the smoke batches, by file://
    URL) is fetched into an empty data folder, and the analysis runs on it; without it, one line says how."""
    import hashlib
    import tarfile

    import lib.sources.official as official_mod

    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(smoke_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(official_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(official_mod, "CIFAR10_ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    argv = ["--checkpoint", str(run_dir), "--data-dir", str(tmp_path / "new"), "--corruptions", "none", "--no-tta",
            "--device", "cpu", "--out"]
    _fails([*argv, str(tmp_path / "out0")], capsys, "--download", tmp_path / "out0")
    assert run_cli(main, [*argv, str(tmp_path / "out"), "--download"]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n"] == 40  # the run's 40 validation images


def test_a_rerun_replaces_the_files(analysis, run_dir, smoke_root, tmp_path):
    """Into a folder holding an earlier analysis, without corruptions: no stale corruptions.csv survives."""
    out = tmp_path / "out"
    shutil.copytree(analysis, out)
    argv = ["--checkpoint", str(run_dir), "--data-dir", str(smoke_root), "--out", str(out), "--corruptions", "none",
            "--no-tta", "--device", "cpu"]
    assert run_cli(main, argv) == 0
    assert {p.name for p in out.iterdir()} == FILES - {"corruptions.csv", "corruptions.png"}
    assert json.loads((out / "metrics.json").read_text())["accuracy_tta"] is None


def test_a_failed_write_leaves_nothing(tmp_path):
    class Broken:
        def savefig(self, *a, **k):
            raise OSError("disk full")

    result = {"metrics": {"n": 1}, "probs": np.ones((1, 10)) / 10, "labels": np.zeros(1, np.int64),
              "fit": np.ones(1, bool), "tables": {}, "figures": {"confusion.png": Broken()}}
    with pytest.raises(OSError, match="disk full"):
        write_analysis(result, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither OUT_DIR nor the temporary folder


# ----------------------------------------------------------------------------------------------------------
# Corruptions
# ----------------------------------------------------------------------------------------------------------
def _change(images, name, severity):
    return np.abs(corrupt(images, name, severity).astype(np.int64) - images).mean()


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "saturate"])
def test_severity_5_changes_the_images_more_than_1(images, name):
    out = corrupt(images, name, 5)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert _change(images, name, 5) > _change(images, name, 1) > 0


def test_saturate_follows_cifar10c_severities(images):
    """CIFAR-10-C's saturate desaturates at 1-2 (x0.3, x0.1) and oversaturates at 3-5: stronger within each."""
    assert CONSTANTS["saturate"][1][0] < CONSTANTS["saturate"][0][0] < 1 < CONSTANTS["saturate"][2][0]
    assert _change(images, "saturate", 2) > _change(images, "saturate", 1) > 0
    assert _change(images, "saturate", 5) > _change(images, "saturate", 3) > 0
    grey = corrupt(images, "saturate", 2).astype(np.int64)
    assert np.abs(grey - grey.mean(3, keepdims=True)).mean() < np.abs(images - images.mean(3, keepdims=True)).mean()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_images(images, name):
    assert np.array_equal(corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_another_seed_other_noise(images, name):
    assert not np.array_equal(corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=2))


def test_gaussian_noise_has_the_published_strength():
    """CIFAR-10-C's severity-5 Gaussian noise has std 0.10 on [0, 1]: about 25.5 grey levels on mid-grey."""
    grey = np.full((64, 32, 32, 3), 128, np.uint8)
    assert corrupt(grey, "gaussian_noise", 5).astype(np.float64).std() == pytest.approx(25.5, rel=0.03)


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "pixelate"])
def test_blurs_keep_a_flat_image(name):
    flat = np.full((2, 32, 32, 3), 100, np.uint8)
    assert np.abs(corrupt(flat, name, 5).astype(int) - 100).max() <= 1  # float sums, then truncation


# ----------------------------------------------------------------------------------------------------------
# The augmentation grid (notebook 01)
# ----------------------------------------------------------------------------------------------------------
def test_augmentation_grid(images):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    labels = np.arange(4)
    fig = augmentation_grid(images[:4], make_config("smoke"), mean, std, seed=0, labels=labels,
                            label_names=CIFAR10_CLASSES)
    rows = [ax.get_ylabel() for ax in fig.axes[::4]]
    assert rows == ["original", "crop + flip", "colour jitter", "rotation", "RandAugment", "random erasing",
                    "MixUp", "CutMix"]
    shown = {row: np.stack([ax.images[0].get_array() for ax in fig.axes[4 * r:4 * r + 4]])
             for r, row in enumerate(rows)}
    np.testing.assert_allclose(shown["original"], images[:4] / 255, atol=1e-6)  # un-normalised exactly
    # CutMix pastes a box of the batch neighbour (torchvision rolls the batch by one): every pixel comes from one
    cutmix, neighbour = shown["CutMix"], np.roll(shown["original"], 1, axis=0)
    own = np.isclose(cutmix, shown["original"], atol=1e-5).all(-1)
    other = np.isclose(cutmix, neighbour, atol=1e-5).all(-1)
    assert (own | other).all() and not own.all()
    again = augmentation_grid(images[:4], make_config("smoke"), mean, std, seed=0, labels=labels,
                              label_names=CIFAR10_CLASSES)
    assert all(np.array_equal(a.images[0].get_array(), b.images[0].get_array()) for a, b in zip(fig.axes, again.axes))
