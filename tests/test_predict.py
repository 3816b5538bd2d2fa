"""Prediction: checkpoint loading, flip TTA, the Kaggle submission CSV, evaluation, and the CLI's bad inputs."""
import csv
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lib.augment import eval_transform
from lib.common import UserError, run_cli
from lib.config import make_config
from lib.data import load_kaggle_test
from lib.predict import evaluate, load_checkpoint, main, predict_file, predict_proba, write_submission
from lib.train import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run_dir(smoke_root, tmp_path_factory):
    """One tiny real training run (1 epoch on the smoke data), shared by every test here."""
    out = tmp_path_factory.mktemp("predict") / "run"
    train(make_config("smoke", model="light_resnet18", base_channels=8, data_dir=str(smoke_root), out=str(out),
                      train_size=100, val_size=50, batch_size=25, epochs=1, progress=False, device="cpu",
                      num_workers=0))
    return out


@pytest.fixture(scope="session")
def loaded(run_dir):
    return load_checkpoint(run_dir / "best.pt")


def cli(argv, capsys):
    """In-process CLI call: (exit code, stdout, stderr)."""
    code = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------- checkpoints
def test_load_checkpoint_rebuilds_the_stored_model(run_dir, loaded):
    model, ckpt = loaded
    assert not model.training
    assert model.config == ckpt["model_config"] and model.config["widths"] == [8, 16, 32, 64]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    # a run folder stands for its best.pt
    model2, ckpt2 = load_checkpoint(run_dir)
    assert ckpt2["epoch"] == ckpt["epoch"]


def test_load_checkpoint_errors_name_the_file(tmp_path, loaded):
    _, ckpt = loaded
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"
    torch.save(ckpt, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    missing_keys = tmp_path / "keys.pt"
    torch.save({"format": 1, "model": {}}, missing_keys)
    wrong_weights = tmp_path / "weights.pt"
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "widths": [16, 32, 64, 128]}}, wrong_weights)
    for path, why in [(tmp_path / "absent.pt", "no such checkpoint"),
                      (random_bytes, "not a readable PyTorch checkpoint"),
                      (truncated, "not a readable PyTorch checkpoint"),
                      (not_dict, "not a lib.train checkpoint"),
                      (missing_keys, "missing config, model_config, normalization"),
                      (wrong_weights, "weights do not fit")]:
        with pytest.raises(UserError, match=why) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- TTA
def test_probabilities_with_and_without_tta(loaded, smoke_root):
    model, ckpt = loaded
    images, _ = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    norm = ckpt["normalization"]
    for tta in (True, False):
        p = predict_proba(model, images[:37], norm["mean"], norm["std"], tta=tta, batch_size=16)
        assert p.shape == (37, 10) and p.dtype == np.float32
        assert (p >= 0).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    assert predict_proba(model, images[:0], norm["mean"], norm["std"]).shape == (0, 10)
    with pytest.raises(ValueError, match="uint8 images"):
        predict_proba(model, images[:4].astype(np.float32), norm["mean"], norm["std"])


def test_tta_is_the_mean_of_original_and_flipped_softmax(loaded, smoke_root):
    model, ckpt = loaded
    images, _ = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    images = images[:20]
    mean, std = ckpt["normalization"]["mean"], ckpt["normalization"]["std"]
    x = eval_transform(mean, std)(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        original = torch.softmax(model(x), 1).numpy()
        flipped = torch.softmax(model(torch.flip(x, dims=[3])), 1).numpy()
    assert not np.allclose(original, flipped, atol=1e-4), "flip must change the input the model sees"
    np.testing.assert_allclose(predict_proba(model, images, mean, std, tta=False, batch_size=8), original,
                               atol=1e-5)
    np.testing.assert_allclose(predict_proba(model, images, mean, std, tta=True, batch_size=8),
                               (original + flipped) / 2, atol=1e-5)



@pytest.mark.parametrize("shape, dtype", [((2, 3, 32, 32), np.uint8), ((2, 32, 32, 4), np.uint8),
                                          ((32, 32, 3), np.uint8), ((2, 32, 32, 3), np.float32)])
def test_only_uint8_hwc_images_are_predicted(shape, dtype):
    """(N, 32, 32, 3) uint8, as the Kaggle pickle holds them: CHW, four channels, one image alone or floats are
    refused before the model sees them."""
    with pytest.raises(ValueError, match="uint8 images of shape"):
        predict_proba(torch.nn.Identity(), np.zeros(shape, dtype), [0.5] * 3, [0.5] * 3)

# ----------------------------------------------------------------------------------------- submission CSV
def test_both_kaggle_layouts_give_the_same_submission(run_dir, smoke_root, tmp_path):
    """N x 3072 rows and N x 32 x 32 x 3 hold the same images: byte-identical CSVs; format and id order."""
    rows_csv, hwc_csv = tmp_path / "sub" / "rows.csv", tmp_path / "hwc.csv"
    rows = predict_file(run_dir / "best.pt", smoke_root / "kaggle_test.pkl", rows_csv, device="cpu")
    hwc = predict_file(run_dir / "best.pt", smoke_root / "kaggle_test_hwc.pkl", hwc_csv, device="cpu")
    assert rows["n"] == hwc["n"] == 200
    assert rows_csv.read_bytes() == hwc_csv.read_bytes()

    lines = rows_csv.read_text().splitlines()
    assert lines[0] == "ID,Labels"
    with open(smoke_root / "kaggle_test_hwc.pkl", "rb") as f:  # our own fixture file: plain pickle is fine
        pickle_ids = pickle.load(f)["ids"]
    body = [line.split(",") for line in lines[1:]]
    assert [int(i) for i, _ in body] == list(pickle_ids)
    assert list(pickle_ids) != sorted(pickle_ids), "fixture ids are shuffled, so order is really tested"
    assert all(lab.isdigit() and 0 <= int(lab) <= 9 for _, lab in body)
    assert not list(rows_csv.parent.glob(".*.tmp"))


def test_no_tta_submission_is_the_argmax_of_a_single_pass(run_dir, loaded, smoke_root, tmp_path):
    model, ckpt = loaded
    images, ids = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    norm = ckpt["normalization"]
    code = run_cli(main, ["--checkpoint", str(run_dir / "best.pt"), "--test-file", str(smoke_root / "kaggle_test.pkl"),
                          "--out", str(tmp_path / "s.csv"), "--no-tta", "--device", "cpu", "--batch-size", "64"])
    assert code == 0
    sub = pd.read_csv(tmp_path / "s.csv")
    assert list(sub.columns) == ["ID", "Labels"] and sub["Labels"].dtype.kind == "i"
    np.testing.assert_array_equal(sub["ID"], ids)
    np.testing.assert_array_equal(sub["Labels"],
                                  predict_proba(model, images, norm["mean"], norm["std"], tta=False).argmax(1))


def test_write_submission_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    write_submission([5, 3], [1, 2], out)
    before = out.read_bytes()

    def fail_midway(self, path, **kw):
        Path(path).write_text("ID,Labels\n5,")  # half a file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_submission([7, 8, 9], [0, 1, 2], out)
    assert out.read_bytes() == before, "a failed write leaves the previous file untouched"
    with pytest.raises(OSError):
        write_submission([1], [1], tmp_path / "new.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"], "no partial or temporary file"


def test_write_submission_checks_labels(tmp_path):
    with pytest.raises(ValueError, match=r"^labels must be integers in 0\.\.9$"):
        write_submission([1, 2], [3, 10], tmp_path / "a.csv")
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        write_submission([1, 2], [3], tmp_path / "b.csv")
    write_submission(np.array(["a", "b"]), np.array([0, 9]), tmp_path / "c.csv")  # string ids pass through
    assert (tmp_path / "c.csv").read_text() == "ID,Labels\na,0\nb,9\n"
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()



@pytest.mark.parametrize("labels", [[-1, 3], [1.0, 2.0], [1.5, 2.0]])
def test_write_submission_refuses_negative_or_non_integer_labels(labels, tmp_path):
    with pytest.raises(ValueError, match=r"^labels must be integers in 0\.\.9$"):
        write_submission([1, 2], np.array(labels), tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_write_submission_to_a_folder_names_it(tmp_path):
    with pytest.raises(UserError) as info:
        write_submission([1], [1], tmp_path)
    assert str(info.value).startswith(f"--out {tmp_path}: ") and "folder" in str(info.value)

# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_matches_the_training_record(run_dir, smoke_root, loaded):
    _, ckpt = loaded
    r = evaluate(run_dir / "best.pt", smoke_root, device="cpu", batch_size=32)
    assert r["n_val"] == 50 and r["data_source"] == "synthetic" and r["warnings"] == []
    # the same split, weights and normalisation as training's validation pass: the same accuracy
    assert r["val_acc"] == pytest.approx(ckpt["best_val_acc"], abs=1.01 / 50)
    assert 0 <= r["val_acc_tta"] <= 1


def test_evaluate_cli_prints_both_accuracies(run_dir, smoke_root, capsys):
    code, out, err = cli(["--checkpoint", run_dir / "best.pt", "--evaluate", "--data-dir", smoke_root,
                          "--device", "cpu"], capsys)
    assert code == 0, err
    assert "without TTA" in out and "with flip TTA" in out and "(50 images)" in out


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def bad_files(tmp_path, smoke_root):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(1).bytes(1000))
    wrong_shape = tmp_path / "wrong_shape.pkl"
    with open(wrong_shape, "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "ids": np.arange(4)}, f)
    garbage_pkl = tmp_path / "garbage.pkl"
    garbage_pkl.write_bytes(b"this is not a pickle")
    return {"random": random_bytes, "wrong_shape": wrong_shape, "garbage": garbage_pkl}


def test_cli_bad_inputs_exit_2_with_one_line(run_dir, smoke_root, bad_files, tmp_path, capsys):
    out = tmp_path / "never.csv"
    ckpt, test = run_dir / "best.pt", smoke_root / "kaggle_test.pkl"
    cases = [
        (["--checkpoint", tmp_path / "missing.pt", "--test-file", test], str(tmp_path / "missing.pt")),
        (["--checkpoint", bad_files["random"], "--test-file", test], str(bad_files["random"])),
        (["--checkpoint", ckpt, "--test-file", tmp_path / "absent.pkl"], str(tmp_path / "absent.pkl")),
        (["--checkpoint", ckpt, "--test-file", bad_files["wrong_shape"]], str(bad_files["wrong_shape"])),
        (["--checkpoint", ckpt, "--test-file", bad_files["garbage"]], str(bad_files["garbage"])),
        (["--checkpoint", ckpt, "--test-file", test, "--device", "tpu"], "--device"),
    ]
    for argv, named in cases:
        code, stdout, err = cli([*argv, "--out", out], capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err, err
        assert not out.exists() and not list(tmp_path.glob(".never.csv*")), "nothing half-written"


@pytest.mark.parametrize("argv, named", [
    (["--checkpoint", "x.pt", "--test-file", "t.pkl", "--out", "o.csv", "--bogus"], "--bogus"),
    (["--checkpoint", "x.pt", "--test-file", "t.pkl"], "--out"),
    (["--checkpoint", "x.pt"], "--evaluate"),
    (["--checkpoint", "x.pt", "--evaluate", "--batch-size", "0"], "--batch-size"),
])
def test_cli_bad_options_exit_2(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err


def test_cli_subprocess_end_to_end(run_dir, smoke_root, bad_files, tmp_path):
    out = tmp_path / "submission.csv"
    ok = subprocess.run([sys.executable, "-m", "lib.predict", "--checkpoint", str(run_dir / "best.pt"),
                         "--test-file", str(smoke_root / "kaggle_test_hwc.pkl"), "--out", str(out),
                         "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and out.read_text().startswith("ID,Labels\n")
    with open(out) as f:
        assert sum(1 for _ in csv.reader(f)) == 201

    bad_out = tmp_path / "bad.csv"
    bad = subprocess.run([sys.executable, "-m", "lib.predict", "--checkpoint", str(bad_files["random"]),
                          "--test-file", str(smoke_root / "kaggle_test.pkl"), "--out", str(bad_out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and str(bad_files["random"]) in bad.stderr, bad.stderr
    assert not bad_out.exists()
