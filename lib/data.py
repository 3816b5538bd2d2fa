"""CIFAR-10 as a run sees it: the training and validation arrays, seeded hold-outs and subsets, the normalisation
statistics, and the Kaggle test images. The files themselves (the official layout, --download, reading a pickle
safely, synthetic stand-ins) are lib.sources.

Arrays are numpy: images ``uint8 (N, 32, 32, 3)`` (HWC), labels ``int64 (N,)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .common import UserError
from .sources import official
from .sources.official import META, TEST_BATCH, TRAIN_BATCHES, find_cifar_dir
from .sources.pickles import as_dict, as_images, entry, read_batch, read_meta, restricted_load

KAGGLE_ROWS, KAGGLE_HWC = "kaggle_test.pkl", "kaggle_test_hwc.pkl"


@dataclass
class CifarData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: Optional[np.ndarray]  # None when the folder has no test_batch (e.g. the JPEG-decoded copy)
    test_y: Optional[np.ndarray]
    label_names: tuple[str, ...]
    source: str  # "cifar10" or "synthetic"
    root: Path  # the folder holding the batches
    official: Optional[bool] = None  # batches byte-identical to the official release; None for synthetic data


@dataclass
class Splits:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    label_names: tuple[str, ...]
    source: str
    description: str  # one line for logs, config.json and the report
    data_official: Optional[bool] = None  # the official release's files (their MD5s); None for synthetic data


def load_cifar10(data_dir, download: bool = False) -> CifarData:
    """Read the official python batches (also re-encoded copies and the smoke data; ``official`` says which)."""
    data_dir = Path(data_dir)
    if download:
        official.download_if_missing(data_dir)
    root = find_cifar_dir(data_dir)
    batches = [read_batch(root / name) for name in TRAIN_BATCHES]
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    del batches
    test_x = test_y = None
    if (root / TEST_BATCH).is_file():
        test_x, test_y = read_batch(root / TEST_BATCH)
    label_names, synthetic = read_meta(root / META)
    return CifarData(train_x, train_y, test_x, test_y, label_names, "synthetic" if synthetic else "cifar10", root,
                     official=None if synthetic else official.is_official_release(root))


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent seeded streams (hold-out, train subset, val subset): changing one never shifts another."""
    return np.random.default_rng([stream, seed % 2**32])


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``round(fraction * n_c)`` of each class c held out, seeded, sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = _rng(seed, 0)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        val.append(rng.permutation(idx)[:int(round(fraction * len(idx)))])
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(labels)), val)
    if not len(val) or not len(train):
        raise ValueError(f"holdout fraction {fraction} of {len(labels)} images leaves an empty split")
    return train, val


def balanced_subset(labels: np.ndarray, size: int, seed: int = 0, num_classes: int = 10,
                    stream: int = 1) -> np.ndarray:
    """Sorted indices of ``size`` images, each class getting floor or ceil of size/num_classes (seeded)."""
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    if size > len(labels):
        raise ValueError(f"{size} requested but only {len(labels)} images are available")
    rng = _rng(seed, stream)
    share = np.full(num_classes, size // num_classes)
    share[rng.choice(num_classes, size % num_classes, replace=False)] += 1  # which classes get the ceil
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < share[c]:
            raise ValueError(f"class {c} has {len(idx)} images, {share[c]} needed for a balanced {size}")
        picked.append(rng.choice(idx, share[c], replace=False))
    return np.sort(np.concatenate(picked))


def load_splits(data_dir, val_source: str = "test", holdout_fraction: float = 0.1, train_size: int | None = None,
                val_size: int | None = None, seed: int = 0, download: bool = False) -> Splits:
    """Train and validation arrays as the run config asks, with a one-line description of what they are."""
    data = load_cifar10(data_dir, download=download)
    if val_source == "test":
        if data.test_x is None:
            raise UserError(f"{data.root / TEST_BATCH} not found: --val-source test needs the official test batch; "
                            "use --val-source holdout to validate on a stratified hold-out of the training batches")
        train_x, train_y, val_x, val_y = data.train_x, data.train_y, data.test_x, data.test_y
        val_what = "official test batch"
    elif val_source == "holdout":
        try:
            tr, va = stratified_holdout(data.train_y, holdout_fraction, seed)
        except ValueError as exc:
            raise UserError(f"--holdout-fraction {holdout_fraction}: {exc}") from None
        train_x, train_y, val_x, val_y = data.train_x[tr], data.train_y[tr], data.train_x[va], data.train_y[va]
        val_what = f"stratified {holdout_fraction * 100:g}% hold-out of the training batches (seed {seed})"
    else:
        raise UserError(f"--val-source {val_source!r}: expected test or holdout")

    def subset(x, y, size, flag, stream):
        if size is None:
            return x, y, f"{len(y)}"
        try:
            idx = balanced_subset(y, size, seed, len(data.label_names), stream)
        except ValueError as exc:
            raise UserError(f"{flag} {size}: {exc}") from None
        return x[idx], y[idx], f"{size} (class-balanced subset of {len(y)}, seed {seed})"

    train_x, train_y, n_train = subset(train_x, train_y, train_size, "--train-size", 1)
    val_x, val_y, n_val = subset(val_x, val_y, val_size, "--val-size", 2)
    what = {None: "synthetic smoke data", True: "CIFAR-10",
            False: "CIFAR-10 (re-encoded copy, not the official release)"}[data.official]
    description = f"{what} at {data.root}; train {n_train}; val = {val_what}, {n_val}"
    return Splits(train_x, train_y, val_x, val_y, data.label_names, data.source, description, data.official)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale, from the data (normalisation is computed, not pasted).

    Exact: 256-bin histograms per channel (integer counts, float64 moments), a chunk of images at a time,
    so 50,000 images never become a float copy.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(f"expected uint8 images (N, 32, 32, 3) with N > 0, got {images.dtype} {images.shape}")
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk]
        for c in range(3):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    n = hist.sum(axis=1)
    mean = hist @ values / n
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    return tuple(mean.tolist()), tuple(np.sqrt(var).tolist())


# ----------------------------------------------------------------------------------------------------------
# Kaggle test pickle
# ----------------------------------------------------------------------------------------------------------

def load_kaggle_test(path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), ids) from a pickle with 'data' (N x 3072 rows or N x 32 x 32 x 3) and 'ids'."""
    path = Path(path)
    d = as_dict(restricted_load(path), path)
    images = as_images(entry(d, "data", path), path, allow_hwc=True)
    ids = np.asarray(entry(d, "ids", path))
    if ids.dtype.kind == "S":  # Python 2 strings
        ids = ids.astype(str)
    if ids.ndim != 1 or ids.dtype.kind not in "iuU":
        raise UserError(f"{path}: ids must be a flat list of integers or strings, got {ids.dtype} {ids.shape}")
    if len(ids) != len(images):
        raise UserError(f"{path}: {len(ids)} ids for {len(images)} images; expected one id per image")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{path}: duplicate ids, e.g. {', '.join(map(str, values[counts > 1][:5]))}")
    return images, ids.astype(np.int64) if ids.dtype.kind in "iu" else ids
