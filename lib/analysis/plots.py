"""Figures of the analysis (notebook 06, ``python -m lib.analysis``) and the augmentation grid (notebook 01).

matplotlib's Figure API (no pyplot state: importing this never changes a notebook's backend), seaborn for the
heatmaps and bars. Every function returns a Figure; notebooks display it, ``lib.analysis.analyze`` saves it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..augment import BatchMix, eval_transform, train_transform
from ..config import RunConfig


def _figure(**kw) -> Figure:
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(confusion: pd.DataFrame, title: str = "") -> Figure:
    """Counts, rows = true class, columns = predicted class."""
    fig = _figure(figsize=(7.5, 6.2), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=ax,
                annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (validation split)", fontsize=10)
    return fig


def per_class_figure(per_class: pd.DataFrame, title: str = "") -> Figure:
    """Precision, recall and F1 per class, as grouped bars (``per_class.csv``'s columns)."""
    long = per_class.melt(id_vars="class", value_vars=["precision", "recall", "f1"], var_name="metric")
    fig = _figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.add_subplot()
    sns.barplot(long, x="class", y="value", hue="metric", ax=ax)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(title or "Per-class precision, recall and F1 (validation split)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def reliability_figure(panels: dict[str, pd.DataFrame]) -> Figure:
    """One reliability diagram per entry (title -> ``lib.analysis.analyze.calibration_bins`` table): accuracy per
    confidence bin against the diagonal of perfect calibration, bar width = bin, shade = share of images."""
    fig = _figure(figsize=(4.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, bins) in zip(axes, panels.items()):
        share = bins["count"] / max(1, bins["count"].sum())
        filled = bins["count"] > 0
        ax.bar(bins["lower"][filled], bins["accuracy"][filled], width=(bins["upper"] - bins["lower"])[filled],
               align="edge", color=sns.color_palette("Blues", as_cmap=True)(0.3 + 0.7 * share[filled]),
               edgecolor="black", linewidth=0.5, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="darkred", markersize=3,
                label="(mean confidence, accuracy)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    return fig


def corruption_figure(corruptions: pd.DataFrame, clean_accuracy: float | None = None) -> Figure:
    """Heatmap of accuracy (%) by corruption (rows) and severity (columns), from ``corruptions.csv``."""
    table = 100 * corruptions.pivot(index="corruption", columns="severity", values="accuracy")
    table = table.loc[list(dict.fromkeys(corruptions["corruption"]))]  # keep the CSV's order
    fig = _figure(figsize=(1.1 * table.shape[1] + 3.5, 0.42 * table.shape[0] + 1.6), layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(table, annot=True, fmt=".1f", cmap="RdYlGn", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "accuracy (%)"})
    clean = "" if clean_accuracy is None else f" (clean: {100 * clean_accuracy:.1f}%)"
    ax.set_title(f"Accuracy under corruption, by severity{clean}", fontsize=10)
    ax.set_xlabel("severity")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def mistakes_figure(images: np.ndarray, true_names: Sequence[str], predicted_names: Sequence[str],
                    confidences: Sequence[float], columns: int = 8) -> Figure:
    """The given images (most confident mistakes first) titled with predicted class, confidence and truth."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = _figure(figsize=(1.5 * columns, 1.75 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            ax.set_title(f"pred {predicted_names[k]} ({confidences[k]:.2f})\ntrue {true_names[k]}", fontsize=7)
    fig.suptitle("Most confident mistakes" if n else "No mistakes on this split", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------------
# What each augmentation of the report does (notebook 01)
# ----------------------------------------------------------------------------------------------------------
# (row label, RunConfig.augment, overrides): each row runs lib.augment.train_transform with only that op on.
AUGMENTATION_ROWS = (
    ("crop + flip", "crop,flip", {}),
    ("colour jitter", "jitter", {}),
    ("rotation", "rotation", {}),
    ("RandAugment", "randaugment", {}),
    ("random erasing", "erasing", {"erasing_prob": 1.0}),  # p=1 here so every image shows it
)


def _display(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised float NCHW -> HWC in [0, 1] for imshow (undoes v2.Normalize)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def augmentation_grid(images: np.ndarray, cfg: RunConfig, mean: Sequence[float], std: Sequence[float],
                      seed: int = 0, labels: Sequence[int] | None = None,
                      label_names: Sequence[str] | None = None) -> Figure:
    """The same uint8 HWC images under each augmentation of the report, one row each, from the code training uses:
    ``lib.augment.train_transform`` with ``cfg.augment`` set to one operation at a time (the cfg's strengths),
    then MixUp and CutMix as ``lib.augment.BatchMix`` applies them to a batch (each image mixed with its
    neighbour, one lambda per batch). Random erasing is shown with p=1; training uses ``cfg.erasing_prob``."""
    images = np.asarray(images)
    to_tensor = eval_transform(mean, std)
    clean = to_tensor(torch.from_numpy(images).permute(0, 3, 1, 2))
    rows: list[tuple[str, np.ndarray]] = [("original", _display(clean, mean, std))]
    for label, augment, overrides in AUGMENTATION_ROWS:
        transform = train_transform(dataclasses.replace(cfg, augment=augment, **overrides), mean, std)
        torch.manual_seed(seed)
        out = torch.stack([transform(torch.from_numpy(im).permute(2, 0, 1).contiguous()) for im in images])
        rows.append((label, _display(out, mean, std)))
    mixers = BatchMix(cfg, num_classes=len(label_names) if label_names else 10).mix.transforms  # [MixUp, CutMix]
    y = torch.as_tensor(labels if labels is not None else np.zeros(len(images), np.int64))
    targets = {}
    for label, mixer in zip(("MixUp", "CutMix"), mixers):
        torch.manual_seed(seed)
        mixed, targets[label] = mixer(clean.clone(), y)
        rows.append((label, _display(mixed, mean, std)))

    n = len(images)
    fig = _figure(figsize=(1.3 * n + 1.2, 1.35 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, shown) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(shown[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if label in targets and label_names is not None:  # the soft target: which two classes, how much
                top = torch.topk(targets[label][c], 2)
                parts = [f"{w:.2f} {label_names[int(i)]}" for w, i in zip(top.values, top.indices) if w > 0.005]
                ax.set_title("\n".join(parts), fontsize=6)
            elif r == 0 and label_names is not None and labels is not None:
                ax.set_title(label_names[int(labels[c])], fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("What each augmentation does to the same images (lib.augment, as in training)", fontsize=10)
    return fig
