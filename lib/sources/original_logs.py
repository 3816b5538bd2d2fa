"""The original team's published training logs (``report/reference/``) and how far a run is from them.

The report's authors committed their Colab notebooks with every epoch's printed line (AlperMumcular/DL-Project1,
commit 0a11187); ``report/reference/README.md`` says which notebook each CSV was parsed from and what its columns
mean. Three of the four Table 1 models have a 300-epoch log; light_resnet18_v2_b45's is lost.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..common import UserError

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "report" / "reference"
REPOSITORY = "AlperMumcular/DL-Project1"
COMMIT = "0a11187"
# model -> (CSV in REFERENCE_DIR, notebook it was parsed from, validation set in words; None: the official test batch)
LOGS = {
    "light_resnet18": ("original_light_resnet18.csv", "0.84517/0_84517.ipynb",
                       "a random 5,000-image hold-out of the training batches"),
    "light_resnet18_v2": ("original_light_resnet18_v2.csv", "0.86851/086851.ipynb", None),
    "robust_resnet64": ("original_robust_resnet64.csv", "0.87709 - Best Model/0_87709.ipynb", None),
}
LOG_COLUMNS = ("epoch", "train_loss", "approx_train_acc", "val_acc")


@dataclass(frozen=True)
class OriginalLog:
    """One original run's log: ``history`` has this repository's column names (epoch, train_loss, train_acc,
    val_acc, best_val_acc; accuracies as fractions). ``train_acc`` is the notebooks' "Approx Train Acc"."""

    model: str
    notebook: str
    holdout: str | None  # the validation set when it is not the official test batch
    history: pd.DataFrame

    @property
    def citation(self) -> str:
        return f"{REPOSITORY} @ {COMMIT}, {self.notebook}"

    @property
    def best_val_acc(self) -> float:
        return float(self.history["val_acc"].max())


def original_log(model: str, reference_dir: str | os.PathLike = REFERENCE_DIR) -> OriginalLog | None:
    """The original run's log of a Table 1 model, or None for a model whose log does not survive."""
    if model not in LOGS:
        return None
    name, notebook, holdout = LOGS[model]
    path = Path(reference_dir) / name
    try:
        log = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (the original team's log of {model}; see report/reference)") from None
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing or log.empty:
        raise UserError(f"{path}: not an original log (missing column(s) {', '.join(missing) or 'none'}, "
                        f"{len(log)} rows)")
    history = log.rename(columns={"approx_train_acc": "train_acc"}).sort_values("epoch", ignore_index=True)
    history["best_val_acc"] = history["val_acc"].cummax()
    return OriginalLog(model, notebook, holdout, history)


def log_difference(history: pd.DataFrame, log: pd.DataFrame) -> dict:
    """Mean absolute difference of a run's history against a log over the epochs both have.

    ``val_acc`` in percentage points, ``train_loss`` as it is (mean cross-entropy per image); ``epochs``: how many
    epochs were compared (0: none in common, the differences are None).
    """
    both = history[["epoch", "val_acc", "train_loss"]].merge(
        log[["epoch", "val_acc", "train_loss"]], on="epoch", suffixes=("", "_log"))
    if both.empty:
        return {"epochs": 0, "val_acc_mae": None, "train_loss_mae": None}
    return {"epochs": len(both),
            "val_acc_mae": float(100 * (both["val_acc"] - both["val_acc_log"]).abs().mean()),
            "train_loss_mae": float((both["train_loss"] - both["train_loss_log"]).abs().mean())}
