"""The official CIFAR-10 format, read safely. Every pickle goes through a restricted unpickler that admits numpy arrays
and plain containers only (a pickle is code: a downloaded batch or Kaggle file must not be able to run any), and
what it holds is checked (keys, shapes, dtypes, value ranges) with one line naming the file when it is wrong.
Images come back as ``uint8 (N, 32, 32, 3)`` (HWC), labels as ``int64 (N,)``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..common import UserError
from .official import CIFAR10_CLASSES

SMOKE_MARKER = "synthetic"  # key in batches.meta that lib.sources.synthetic sets, so a result never passes as CIFAR-10


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------------------

# What numpy arrays (and numpy scalars) need, under numpy 1 (numpy.core) and numpy 2 (numpy._core) names;
# _frombuffer is how protocol-5 pickles spell an array. Plus the builtin containers pickle names by module.
_SAFE_GLOBALS = {
    *((mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((mod, name) for mod in ("builtins", "__builtin__")  # __builtin__: the Python 2 name
      for name in ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "complex")),
}


def _latin1_encode(text, encoding="latin1"):
    """Protocol-2 pickles from Python 3 spell bytes as ``_codecs.encode(text, "latin1")``; admit only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not a plain bytes value")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")  # the official batches are Python 2 pickles
        self.path = path

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UserError(f"{self.path}: refusing to unpickle {module}.{name} — "
                        "only numpy arrays and plain containers are allowed")


def restricted_load(path) -> object:
    """Unpickle ``path`` admitting only numpy arrays and plain containers; any problem is a UserError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except EOFError:
        raise UserError(f"{path}: truncated pickle (the file ends early; re-download it)") from None
    except Exception as exc:  # whatever the bytes make the unpickler raise, the file is the problem
        raise UserError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------------------
# Validation of what a pickle holds
# ----------------------------------------------------------------------------------------------------------

def as_dict(obj, path) -> dict:
    """Python 2 pickles give byte-string keys (b"data"), Python 3 ones str keys: accept both."""
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict (with 'data', ...), got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def entry(d: dict, key: str, path):
    if key not in d:
        raise UserError(f"{path}: no '{key}' entry (keys: {', '.join(map(str, d)) or 'none'})")
    return d[key]


def as_images(data, path, allow_hwc: bool) -> np.ndarray:
    """Pixel data -> uint8 (N, 32, 32, 3). Rows are N x 3072: the R plane, then G, then B, each row-major."""
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nested lists
        raise UserError(f"{path}: image data is not a rectangular array ({exc})") from None
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise UserError(f"{path}: image data has dtype {arr.dtype}; expected uint8 pixel values 0..255")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{path}: pixel values span {arr.min()}..{arr.max()}; expected 0..255 (uint8)")
        arr = arr.astype(np.uint8)  # e.g. int64 pixels that fit: the values are the same
    if arr.ndim == 2 and arr.shape[1] == 3072:
        arr = arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    elif not (allow_hwc and arr.ndim == 4 and arr.shape[1:] == (32, 32, 3)):
        expected = "N x 3072 (rows) or N x 32 x 32 x 3 (HWC)" if allow_hwc else "N x 3072"
        raise UserError(f"{path}: image data has shape {' x '.join(map(str, arr.shape))}; expected {expected}")
    if len(arr) == 0:
        raise UserError(f"{path}: holds no images")
    return np.ascontiguousarray(arr)


def as_labels(labels, n: int, path) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{path}: {y.shape} labels for {n} images; expected one label per image")
    if y.dtype.kind not in "iu":
        raise UserError(f"{path}: labels have dtype {y.dtype}; expected integers 0..9")
    if y.min() < 0 or y.max() > 9:
        raise UserError(f"{path}: labels span {y.min()}..{y.max()}; expected 0..9")
    return y.astype(np.int64)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = as_dict(restricted_load(path), path)
    x = as_images(entry(d, "data", path), path, allow_hwc=False)
    return x, as_labels(entry(d, "labels", path), len(x), path)


def read_meta(path: Path) -> tuple[tuple[str, ...], bool]:
    """(label names, whether write_smoke_dataset wrote it). The meta file only names classes: optional."""
    if not path.is_file():
        return CIFAR10_CLASSES, False
    d = as_dict(restricted_load(path), path)
    names = d.get("label_names", CIFAR10_CLASSES)
    if not isinstance(names, (list, tuple, np.ndarray)) or len(names) != 10:
        raise UserError(f"{path}: 'label_names' should list the 10 CIFAR-10 classes, got {names!r:.80}")
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    return names, bool(d.get(SMOKE_MARKER, False))
