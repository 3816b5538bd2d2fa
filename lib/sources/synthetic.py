"""Synthetic smoke data in the official CIFAR-10 python layout, so tests and the smoke profile exercise the real
reading code (``lib.data``). Never CIFAR-10: ``batches.meta`` carries a marker that makes ``source == "synthetic"``.
"""
from __future__ import annotations

import colorsys
import pickle
import sys
from pathlib import Path

import numpy as np

from ..common import atomic_path
from ..data import KAGGLE_HWC, KAGGLE_ROWS
from .official import BATCH_DIR, CIFAR10_CLASSES, META, TEST_BATCH, TRAIN_BATCHES, has_any_cifar_file
from .pickles import SMOKE_MARKER

# One flip-invariant shape per class, drawn in the class's own hue at a random place and size: a small CNN
# tells them apart within a few hundred steps, even through crops, flips, rotations, colour jitter,
# RandAugment and erasing (the shape survives a hue shift, the hue survives erasing part of the shape).
# Arguments: |dx|, |dy|, signed dy, distance from the centre, radius (arrays broadcast per image).
_SMOKE_SHAPES = (
    lambda ax, ay, dy, d, r: d < r,                                                          # disc
    lambda ax, ay, dy, d, r: np.maximum(ax, ay) < 0.8 * r,                                   # square
    lambda ax, ay, dy, d, r: (d < r) & (d > 0.55 * r),                                       # ring
    lambda ax, ay, dy, d, r: ((ax < 0.25 * r) | (ay < 0.25 * r)) & (np.maximum(ax, ay) < r),  # plus
    lambda ax, ay, dy, d, r: (np.abs(ax - ay) < 0.3 * r) & (np.maximum(ax, ay) < 0.85 * r),  # X
    lambda ax, ay, dy, d, r: ax + ay < r,                                                    # diamond
    lambda ax, ay, dy, d, r: (dy > -r) & (dy < 0.7 * r) & (ax < 0.6 * (dy + r)),             # triangle
    lambda ax, ay, dy, d, r: (np.maximum(ax, ay) < r) & ((ay // (0.4 * r)) % 2 == 0),        # horizontal bars
    lambda ax, ay, dy, d, r: (np.maximum(ax, ay) < r) & ((ax // (0.4 * r)) % 2 == 0),        # vertical bars
    lambda ax, ay, dy, d, r: (np.maximum(ax, ay) < r) & (np.maximum(ax, ay) > 0.6 * r),      # frame
)


def _smoke_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    grid = np.arange(32, dtype=np.float32)
    cx, cy = (rng.uniform(11, 21, (2, n, 1, 1))).astype(np.float32)
    r = rng.uniform(7, 11, (n, 1, 1)).astype(np.float32)
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    ax, ay, d = np.abs(dx), np.abs(dy), np.hypot(dx, dy)
    mask = np.zeros((n, 32, 32), dtype=bool)
    for k, shape in enumerate(_SMOKE_SHAPES):
        i = labels == k
        mask[i] = shape(ax[i], ay[i], dy[i], d[i], r[i])
    # class hue (k/10, jittered), bright and saturated, on a dull random background, plus pixel noise
    fg = np.array([colorsys.hsv_to_rgb((k / 10 + rng.uniform(-0.02, 0.02)) % 1, rng.uniform(0.6, 1.0),
                                       rng.uniform(0.75, 1.0)) for k in labels], dtype=np.float32)
    bg = np.array([colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.05, 0.45))
                   for _ in labels], dtype=np.float32)
    img = np.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :])
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.int64)


def _dump(obj, path: Path, protocol: int) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a reader never sees a half-written file
        pickle.dump(obj, f, protocol=protocol)


def write_smoke_dataset(root, per_batch: int = 200, test_count: int = 500, kaggle_count: int = 200,
                        seed: int = 0) -> Path:
    """Write a small learnable synthetic CIFAR-10 stand-in under ``root``; returns ``root/cifar-10-batches-py``.

    Batches are protocol-2 pickles of dicts with byte-string keys, as the official Python 2 files are read
    with ``encoding="bytes"``. ``batches.meta`` carries the marker that makes ``source == "synthetic"``.
    The two Kaggle pickles hold the same images and (shuffled) ids in the two layouts seen in the wild:
    ``kaggle_test.pkl`` N x 3072 rows with byte keys (protocol 4), ``kaggle_test_hwc.pkl`` HWC with str keys
    (protocol 5), so both spellings pass through the restricted unpickler.
    """
    root = Path(root)
    out = root / BATCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def rows(x):  # HWC -> the official rows: R plane, G plane, B plane
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))

    batches = [(name, per_batch, f"training batch {i + 1} of 5") for i, name in enumerate(TRAIN_BATCHES)]
    for name, count, label in [*batches, (TEST_BATCH, test_count, "testing batch 1 of 1")]:
        y = _balanced_labels(count, rng)
        _dump({b"batch_label": f"{label} (synthetic smoke data)".encode(),
               b"labels": y.tolist(),
               b"data": rows(_smoke_images(y, rng)),
               b"filenames": [f"smoke_{name}_{i:05d}.png".encode() for i in range(count)]}, out / name, protocol=2)
    _dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch,
           b"num_vis": 3072, SMOKE_MARKER.encode(): 1}, out / META, protocol=2)

    x = _smoke_images(_balanced_labels(kaggle_count, rng), rng)
    ids = rng.permutation(kaggle_count).astype(np.int64)  # not 0..N-1 in order: the submission must keep this order
    _dump({b"data": rows(x), b"ids": ids}, root / KAGGLE_ROWS, protocol=4)
    _dump({"data": x, "ids": ids}, root / KAGGLE_HWC, protocol=5)
    return out


def ensure_smoke_data(data_dir) -> bool:
    """Write the smoke dataset into ``data_dir`` when it holds no CIFAR files at all; True if it did.

    A partial real copy is left alone (loading it then says what is missing) rather than overwritten.
    """
    data_dir = Path(data_dir)
    if has_any_cifar_file(data_dir):
        return False
    write_smoke_dataset(data_dir)
    print(f"no CIFAR-10 in {data_dir}: generated synthetic smoke data there (not CIFAR-10)", file=sys.stderr)
    return True
