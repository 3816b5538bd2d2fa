"""The original team's logs (report/reference/) and the difference of a history against one."""
import pandas as pd
import pytest

from lib.common import UserError
from lib.sources.original_logs import LOGS, REFERENCE_DIR, log_difference, original_log


def test_the_three_surviving_logs_as_the_notebooks_printed_them():
    """Best and last epochs as printed in AlperMumcular/DL-Project1's notebooks (its README names them)."""
    expected = {"robust_resnet64": (0.9693, 292, 0.9686), "light_resnet18_v2": (0.9611, None, 0.9575),
                "light_resnet18": (0.9512, None, 0.9498)}
    for model, (best, best_epoch, last) in expected.items():
        log = original_log(model)
        h = log.history
        assert list(h["epoch"]) == list(range(1, 301)), model
        assert log.best_val_acc == pytest.approx(best) and h["val_acc"].iloc[-1] == pytest.approx(last), model
        assert h["best_val_acc"].iloc[-1] == pytest.approx(best) and h["best_val_acc"].is_monotonic_increasing
        if best_epoch:
            assert int(h.loc[h["val_acc"].idxmax(), "epoch"]) == best_epoch
    assert original_log("light_resnet18").holdout and original_log("robust_resnet64").holdout is None
    assert original_log("light_resnet18_v2_b45") is None  # its log is lost
    # RobustResNet64 epoch 292 as printed: "Train Loss: 1.1582, Approx Train Acc: 72.14% | Val Acc: 96.93%"
    h = original_log("robust_resnet64").history.set_index("epoch")
    assert tuple(h.loc[292, ["train_loss", "train_acc", "val_acc"]]) == pytest.approx((1.1582, 0.7214, 0.9693))
    readme = (REFERENCE_DIR / "README.md").read_text()
    assert "AlperMumcular/DL-Project1" in readme and "0a11187" in readme
    for name, notebook, _ in LOGS.values():
        assert f"`{name}`" in readme and f"`{notebook}`" in readme


def test_log_difference_against_a_hand_made_log():
    history = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.40, 0.50, 0.60], "train_loss": [2.0, 1.8, 1.6]})
    log = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "val_acc": [0.42, 0.47, 0.60, 0.7, 0.8],
                        "train_loss": [2.1, 1.8, 1.5, 1.0, 0.9]})
    d = log_difference(history, log)
    # epochs 1-3 only: |40-42|, |50-47|, |60-60| = 2, 3, 0 points; |2.0-2.1|, 0, |1.6-1.5| = 0.1, 0, 0.1
    assert d["epochs"] == 3
    assert d["val_acc_mae"] == pytest.approx(5 / 3) and d["train_loss_mae"] == pytest.approx(0.2 / 3)
    # a run resumed from epoch 4 on (rows 4-5 only) against a log of epochs 1-3: nothing in common
    assert log_difference(log.iloc[3:], history) == {"epochs": 0, "val_acc_mae": None, "train_loss_mae": None}


def test_a_missing_or_foreign_reference_file_is_named(tmp_path):
    with pytest.raises(UserError, match="original_robust_resnet64.csv: no such file"):
        original_log("robust_resnet64", tmp_path)
    (tmp_path / "original_robust_resnet64.csv").write_text("epoch,val_acc\n1,0.5\n")
    with pytest.raises(UserError, match=r"original_robust_resnet64.csv: not an original log \(missing column\(s\) "
                                        r"train_loss, approx_train_acc"):
        original_log("robust_resnet64", tmp_path)
    (tmp_path / "original_robust_resnet64.csv").write_text("epoch,train_loss,approx_train_acc,val_acc\n"
                                                          "2,1.5,0.4,0.6\n1,2.0,0.3,0.5\n")
    h = original_log("robust_resnet64", tmp_path).history  # rows in epoch order, best so far added
    assert list(h["epoch"]) == [1, 2] and list(h["best_val_acc"]) == [0.5, 0.6] and list(h["train_acc"]) == [0.3, 0.4]
