"""Prediction and evaluation against facts computed here: `evaluate`'s accuracies counted by hand from the model's
own softmax on the rebuilt split, the split rebuilt from the checkpoint's config and its mismatches named, the
submission's summary against the CSV it wrote, and `python -m lib.predict`'s printed lines, in-process.

Each test writes its own checkpoint by hand (an untrained light_resnet18 of width 4 and its config), so nothing
here trains and nothing is shared between tests.
"""
import numpy as np
import pandas as pd
import pytest
import torch

import lib.predict
from lib.augment import eval_transform
from lib.common import UserError
from lib.config import make_config
from lib.data import load_kaggle_test, load_splits
from lib.models import build
from lib.predict import evaluate, main, predict_file, validation_split
from test_predict import cli  # the in-process CLI call

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def write_checkpoint(path, data_dir, data=None, init_seed=7, epoch=7, **overrides):
    """A checkpoint as lib.train writes it (the keys prediction reads), for an untrained model (its seed 7: one
    whose flipped images change some answers on the smoke split and test pickle)."""
    settings = dict(model="light_resnet18", base_channels=4, data_dir=str(data_dir), train_size=60, val_size=40,
                    seed=2, device="cpu", num_workers=0, progress=False)
    cfg = make_config("smoke", **{**settings, **overrides})
    torch.manual_seed(init_seed)
    model = build(cfg.validate())
    ckpt = {"format": 2, "config": cfg.to_dict(), "model_config": model.config, "model": model.state_dict(),
            "normalization": {"mean": MEAN, "std": STD}, "epoch": epoch, "best_val_acc": 0.125}
    if data is not None:
        ckpt["data"] = data
    torch.save(ckpt, path)
    return model.eval()


def softmax(model, images, flip=False):
    """The model's softmax on uint8 HWC images, through training's validation transform (torchvision's)."""
    x = eval_transform(MEAN, STD)(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        return torch.softmax(model(x.flip(3) if flip else x), 1).numpy()


@pytest.fixture
def ckpt(tmp_path, smoke_root):
    path = tmp_path / "best.pt"
    model = write_checkpoint(path, smoke_root, data={"source": "synthetic", "n_val": 40})
    return path, model


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_counts_the_hits_of_one_and_of_two_passes(ckpt, smoke_root):
    """val_acc: argmax of the plain softmax against the labels; val_acc_tta: argmax of plain + flipped. The split
    is the checkpoint's (test batch, 40 images, seed 2), read from the config's own data_dir."""
    path, model = ckpt
    split = load_splits(smoke_root, train_size=60, val_size=40, seed=2)
    plain, flipped = softmax(model, split.val_x), softmax(model, split.val_x, flip=True)
    hits = int((plain.argmax(1) == split.val_y).sum())
    hits_tta = int(((plain + flipped).argmax(1) == split.val_y).sum())
    assert hits != hits_tta, "the flip must change some answers, so that the two accuracies are told apart"

    r = evaluate(path, device="cpu", batch_size=16)
    assert r["val_acc"] == hits / 40 and r["val_acc_tta"] == hits_tta / 40
    assert r == {"checkpoint": str(path), "model": "light_resnet18", "epoch": 7, "n_val": 40,
                 "val_acc": hits / 40, "val_acc_tta": hits_tta / 40, "best_val_acc_recorded": 0.125,
                 "data_source": "synthetic", "data_description": split.description, "warnings": []}
    assert type(r["val_acc"]) is float and type(r["n_val"]) is int
    # a run folder stands for its best.pt; the batch size changes nothing
    again = evaluate(path.parent, device="cpu", batch_size=7)
    assert (again["val_acc"], again["val_acc_tta"]) == (hits / 40, hits_tta / 40)


def test_evaluate_rebuilds_a_holdout_split_from_the_config(tmp_path, smoke_root):
    """val_source holdout, fraction 0.2, seed 3, 50 validation images: 50 of the 200 held out of the 1,000 training
    images (5 per class), the same ones as load_splits draws for those settings."""
    path = tmp_path / "holdout.pt"
    model = write_checkpoint(path, smoke_root, val_source="holdout", holdout_fraction=0.2, seed=3, train_size=100,
                             val_size=50)
    r = evaluate(path, device="cpu")
    split = load_splits(smoke_root, val_source="holdout", holdout_fraction=0.2, seed=3, train_size=100, val_size=50)
    assert np.bincount(split.val_y).tolist() == [5] * 10 and len(split.train_y) == 100
    assert r["n_val"] == 50 and r["data_source"] == "synthetic" and r["data_description"] == split.description
    assert "20% hold-out of the training batches (seed 3)" in r["data_description"]
    assert r["val_acc"] == (softmax(model, split.val_x).argmax(1) == split.val_y).mean()


def test_the_data_folder_given_overrides_the_runs(tmp_path, smoke_root):
    """data_dir None: the run's own folder (here an empty one: refused, naming it); given: that folder."""
    path = tmp_path / "best.pt"
    write_checkpoint(path, tmp_path / "moved")
    with pytest.raises(UserError, match="no CIFAR-10 found") as info:
        evaluate(path, device="cpu")
    assert str(tmp_path / "moved") in str(info.value)
    assert evaluate(path, smoke_root, device="cpu")["n_val"] == 40


# ---------------------------------------------------------------------------------------- validation_split
@pytest.mark.parametrize("data, warnings", [
    (None, []),  # a checkpoint without the record (format 1): nothing to compare
    ({}, []),
    ({"source": "synthetic", "n_val": 40}, []),
    ({"source": "cifar10", "n_val": 40}, ["the run validated on cifar10 data, this split is synthetic data"]),
    ({"source": "synthetic", "n_val": 10000}, ["the run validated on 10000 images, this split has 40"]),
    ({"source": "cifar10", "n_val": 39}, ["the run validated on cifar10 data, this split is synthetic data",
                                          "the run validated on 39 images, this split has 40"]),
])
def test_the_split_names_where_it_differs_from_the_runs(tmp_path, smoke_root, data, warnings):
    path = tmp_path / "best.pt"
    write_checkpoint(path, smoke_root, data=data)
    ckpt = torch.load(path, weights_only=True)
    splits, found = validation_split(ckpt)
    assert found == warnings
    assert len(splits.val_y) == 40 and len(splits.train_y) == 60
    expected = load_splits(smoke_root, train_size=60, val_size=40, seed=2)
    np.testing.assert_array_equal(splits.val_y, expected.val_y)
    np.testing.assert_array_equal(splits.train_y, expected.train_y)


# ---------------------------------------------------------------------------------------------- predict_file
@pytest.mark.parametrize("tta", [True, False])
def test_the_summary_describes_the_csv_written(ckpt, smoke_root, tmp_path, tta):
    """n, tta and the counts per class (all ten, zeros included) are those of the CSV; its labels are the argmax
    of one pass or of the mean of two."""
    path, model = ckpt
    out = tmp_path / "sub.csv"
    r = predict_file(path, smoke_root / "kaggle_test.pkl", out, tta=tta, device="cpu", batch_size=64)
    images, ids = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    p = softmax(model, images) + (softmax(model, images, flip=True) if tta else 0)
    sub = pd.read_csv(out)
    np.testing.assert_array_equal(sub["ID"], ids)
    np.testing.assert_array_equal(sub["Labels"], p.argmax(1))
    counts = [int((sub["Labels"] == c).sum()) for c in range(10)]
    assert 0 in counts, "an untrained model leaves some class out, so the zeros are tested"
    assert r == {"out": str(out), "n": 200, "tta": tta, "class_counts": counts}


def test_the_defaults_are_two_passes_on_the_best_device(ckpt, smoke_root, tmp_path):
    """predict_file and evaluate with nothing but the files: flip TTA (the report's inference), device auto."""
    path, model = ckpt
    out = tmp_path / "default.csv"
    assert predict_file(path, smoke_root / "kaggle_test.pkl", out)["tta"] is True
    images, _ = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    two_passes = (softmax(model, images) + softmax(model, images, flip=True)).argmax(1)
    assert (two_passes != softmax(model, images).argmax(1)).any(), "one pass must give other labels"
    np.testing.assert_array_equal(pd.read_csv(out)["Labels"], two_passes)
    assert evaluate(path)["n_val"] == 40


def test_a_folder_as_out_is_refused_before_the_checkpoint_is_read(tmp_path, smoke_root):
    with pytest.raises(UserError, match=rf"^--out {tmp_path}: is a folder, expected a CSV file name$"):
        predict_file(tmp_path / "absent.pt", smoke_root / "kaggle_test.pkl", tmp_path)


# ------------------------------------------------------------------------------------------- the command
def test_evaluate_prints_its_lines_and_warnings(tmp_path, smoke_root, capsys):
    path = tmp_path / "best.pt"
    write_checkpoint(path, smoke_root, data={"source": "cifar10", "n_val": 40}, epoch=12)
    r = evaluate(path, device="cpu")
    code, out, err = cli(["--checkpoint", path, "--evaluate"], capsys)
    assert code == 0
    assert out.splitlines() == [
        f"{path} (light_resnet18, epoch 12) on {r['data_description']}",
        f"val accuracy without TTA: {100 * r['val_acc']:.2f}%  (40 images)",
        f"val accuracy with flip TTA: {100 * r['val_acc_tta']:.2f}%"]
    assert err == "warning: the run validated on cifar10 data, this split is synthetic data\n"


def test_predict_prints_what_it_wrote(ckpt, smoke_root, tmp_path, capsys):
    path, _ = ckpt
    for flags, tta, said in [([], True, "flip TTA"), (["--no-tta"], False, "no TTA")]:
        out = tmp_path / f"{tta}.csv"
        code, stdout, err = cli(["--checkpoint", path, "--test-file", smoke_root / "kaggle_test.pkl", "--out", out,
                                 *flags], capsys)
        assert code == 0 and err == ""
        counts = np.bincount(pd.read_csv(out)["Labels"], minlength=10).tolist()
        assert stdout == f"wrote {out}: 200 predictions ({said}); per class {counts}\n"
        r = predict_file(path, smoke_root / "kaggle_test.pkl", tmp_path / "again.csv", tta=tta, device="cpu")
        assert r["class_counts"] == counts


def test_the_options_reach_evaluate_and_predict_file(ckpt, smoke_root, tmp_path, capsys, monkeypatch):
    """--evaluate and --test-file together do both; --data-dir, --device, --batch-size and --no-tta are passed on."""
    path, _ = ckpt
    calls = []
    real_evaluate, real_predict = lib.predict.evaluate, lib.predict.predict_file

    def spy_evaluate(*args, **kwargs):
        calls.append(("evaluate", args, kwargs))
        return real_evaluate(*args, **kwargs)

    def spy_predict(*args, **kwargs):
        calls.append(("predict", args, kwargs))
        return real_predict(*args, **kwargs)

    real_passes = lib.predict._softmax_passes
    batch_sizes = []

    def spy_passes(model, images, mean, std, flips, batch_size, device):
        batch_sizes.append(batch_size)
        return real_passes(model, images, mean, std, flips, batch_size, device)

    monkeypatch.setattr(lib.predict, "evaluate", spy_evaluate)
    monkeypatch.setattr(lib.predict, "predict_file", spy_predict)
    monkeypatch.setattr(lib.predict, "_softmax_passes", spy_passes)
    out = tmp_path / "s.csv"
    code, stdout, _ = cli(["--checkpoint", path, "--evaluate", "--data-dir", smoke_root, "--test-file",
                           smoke_root / "kaggle_test.pkl", "--out", out, "--no-tta", "--device", "cpu",
                           "--batch-size", "33"], capsys)
    assert code == 0 and out.is_file()
    assert calls == [("evaluate", (str(path), str(smoke_root)), {"device": "cpu", "batch_size": 33}),
                     ("predict", (str(path), str(smoke_root / "kaggle_test.pkl"), str(out)),
                      {"tta": False, "device": "cpu", "batch_size": 33})]
    assert "val accuracy with flip TTA" in stdout and "(no TTA)" in stdout
    assert batch_sizes == [33, 33], "the batch size reaches the forward passes of both"
    calls.clear()
    assert cli(["--checkpoint", path, "--test-file", smoke_root / "kaggle_test.pkl", "--out", out], capsys)[0] == 0
    assert calls == [("predict", (str(path), str(smoke_root / "kaggle_test.pkl"), str(out)),
                      {"tta": True, "device": "auto", "batch_size": 512})]
    calls.clear()
    assert cli(["--checkpoint", path, "--evaluate"], capsys)[0] == 0
    assert calls == [("evaluate", (str(path), None), {"device": "auto", "batch_size": 512})]


def test_help_names_the_command_and_what_each_option_takes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m lib.predict ")
    for fact in ["Predict a Kaggle test pickle (writes the submission CSV) and/or evaluate a checkpoint on its "
                 "validation split, with two-pass flip TTA.",
                 "--checkpoint CHECKPOINT RUN_DIR/best.pt (or a run folder: its best.pt)",
                 "--test-file TEST_FILE Kaggle test pickle (keys data, ids; N x 3072 or N x 32 x 32 x 3)",
                 "--out OUT submission CSV to write (ID,Labels); required with --test-file",
                 "--evaluate print validation accuracy without and with TTA",
                 "--data-dir DATA_DIR with --evaluate: where CIFAR-10 lives (default: the run's data_dir)",
                 "--no-tta single pass, no flip averaging", "--device DEVICE auto, cpu or cuda",
                 "--batch-size BATCH_SIZE images per forward pass"]:
        assert fact in text, fact


@pytest.mark.parametrize("argv, line", [
    (["--evaluate"], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "x.pt"], "nothing to do: give --test-file PKL --out CSV, or --evaluate"),
    (["--checkpoint", "x.pt", "--test-file", "t.pkl"], "--out is required with --test-file"),
    (["--checkpoint", "x.pt", "--evaluate", "--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--checkpoint", "x.pt", "--evaluate", "--batch-size", "-3"], "--batch-size -3: must be >= 1"),
])
def test_option_errors_say_what_to_give(argv, line, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"python -m lib.predict: error: {line}"


def test_batch_size_one_is_allowed(ckpt, capsys):
    path, _ = ckpt
    assert cli(["--checkpoint", path, "--evaluate", "--batch-size", "1"], capsys)[0] == 0
