"""One checkpoint reader for --resume and prediction: every unreadable, truncated or foreign file is one line,
exit code 2, naming the file; a run's settings are checked before any file is opened; run_cli hides only the
project's own errors."""
import os
import pickle
import shutil

import pytest
import torch

import lib.predict
import lib.train
from lib.common import UserError, run_cli
from lib.models import build_model


class RunsCode:
    """A pickle that would run a command when loaded: weights_only must refuse it."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    model = build_model("light_resnet18", base_channels=8)
    good = {"format": 1, "config": {}, "model_config": model.config, "epoch": 1, "model": model.state_dict(),
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    torch.save(good, d / "good.pt")
    files = {"junk.pt": b"junk\n",  # `printf 'junk\n' > junk.pt`: used to end in struct.error
             "empty.pt": b"",
             "truncated.pt": (d / "good.pt").read_bytes()[:5000],
             "code.pt": pickle.dumps(RunsCode(), protocol=2)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    torch.save(torch.zeros(3), d / "tensor.pt")
    torch.save({**good, "format": 99}, d / "format99.pt")
    torch.save({"format": 1, "model": {}}, d / "foreign_dict.pt")
    return d


BAD = ["junk.pt", "empty.pt", "truncated.pt", "code.pt", "tensor.pt", "format99.pt", "foreign_dict.pt"]


def test_the_fixture_checkpoint_itself_loads(bad_checkpoints):
    model, ckpt = lib.predict.load_checkpoint(bad_checkpoints / "good.pt")
    assert not model.training and ckpt["epoch"] == 1


@pytest.mark.parametrize("name", BAD)
def test_predict_refuses_bad_checkpoint_in_one_line(bad_checkpoints, smoke_root, tmp_path, name, capsys):
    path = bad_checkpoints / name
    code = run_cli(lib.predict.main, ["--checkpoint", str(path), "--test-file", str(smoke_root / "kaggle_test.pkl"),
                                      "--out", str(tmp_path / "s.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err, err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("name", BAD)
def test_resume_refuses_bad_last_pt_in_one_line(bad_checkpoints, smoke_root, tmp_path, name, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(bad_checkpoints / name, run / "last.pt")
    code = run_cli(lib.train.main, ["--profile", "smoke", "--data-dir", str(smoke_root), "--out", str(run),
                                    "--device", "cpu", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(run / "last.pt") in err, err
    assert sorted(os.listdir(run)) == [".lock", "last.pt"], "nothing written besides the lock"


def test_settings_are_checked_before_the_data_is_read(smoke_root, tmp_path, capsys):
    """--model no_such_model on a folder with a damaged batch reports the model, not the batch."""
    data = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(smoke_root / "cifar-10-batches-py", data)
    (data / "data_batch_3").write_bytes(b"damaged")
    for bad, named in [(["--model", "no_such_model"], "no_such_model"), (["--color-jitter", "3"], "--color-jitter"),
                       (["--augment", "randaugment,autoaugment"], "autoaugment"), (["--seed", "-1"], "--seed")]:
        code = run_cli(lib.train.main, ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                        *bad])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err and "data_batch_3" not in err, err
    assert not (tmp_path / "run").exists()
    code = run_cli(lib.train.main, ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                    "--epochs", "1", "--device", "cpu"])
    assert code == 2 and "data_batch_3" in capsys.readouterr().err  # good settings: now the batch is the problem


def test_run_cli_hides_only_user_errors(capsys):
    def user_mistake(argv):
        raise UserError("--thing: bad")

    def bug(argv):
        raise ValueError("a bug inside torch")

    assert run_cli(user_mistake, []) == 2 and capsys.readouterr().err == "error: --thing: bad\n"
    with pytest.raises(ValueError, match="a bug inside torch"):
        run_cli(bug, [])

