"""Prediction: load a checkpoint, predict with flip test-time augmentation, write the Kaggle submission.

The report's inference: "the original and flipped versions of each image are passed through the network,
then the two softmax outputs are averaged" (two-pass TTA). The same code evaluates a checkpoint on its
run's validation split, with and without TTA.

    python -m lib.predict --checkpoint runs/r64/best.pt --test-file kaggle_test.pkl --out submission.csv
    python -m lib.predict --checkpoint runs/r64/best.pt --evaluate [--data-dir data]
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torchvision.transforms.v2 import functional as F

from .augment import memory_format
from .checkpoint import load_model as load_checkpoint  # a run folder or its best.pt
from .common import ArgumentParser, UserError, amp_dtype, atomic_path, resolve_device, run_cli
from .config import RunConfig

SUBMISSION_HEADER = ("ID", "Labels")  # exactly what the Kaggle competition expects


def _softmax_passes(model: nn.Module, images: np.ndarray, mean, std, flips: tuple[bool, ...],
                    batch_size: int, device: torch.device | None) -> list[np.ndarray]:
    """Softmax outputs (float32, N x classes) of one pass per entry of ``flips`` (True = horizontal flip)."""
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # the validation transform of training (lib.augment.EvalLoader's arithmetic), its constants on the device
    # once: F.normalize would copy them from Python lists on every batch, a host sync on CUDA
    mean_t, std_t = (torch.tensor([float(v) for v in values], device=device).view(1, -1, 1, 1)
                     for values in (mean, std))
    layout = memory_format(None, device)
    model.to(memory_format=layout)  # NHWC on CUDA, as in training; the weights' values are unchanged
    dtype = amp_dtype(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    model.eval()
    outs: list[list[torch.Tensor]] = [[] for _ in flips]
    with torch.inference_mode(), autocast:
        for start in range(0, len(images), batch_size):
            x = torch.tensor(images[start:start + batch_size]).to(device)  # a copy: pickled arrays may be read-only
            x = F.to_dtype(x.permute(0, 3, 1, 2), torch.float32, scale=True).sub_(mean_t).div_(std_t)
            x = x.contiguous(memory_format=layout)
            for out, flip in zip(outs, flips):
                logits = model(x.flip(3) if flip else x)  # dim 3 = width: a horizontal flip
                out.append(torch.softmax(logits.float(), dim=1))
    empty = np.zeros((0, model.config["num_classes"]), np.float32)
    return [torch.cat(o).cpu().numpy() if o else empty for o in outs]


def predict_proba(model: nn.Module, images: np.ndarray, mean, std, tta: bool = True, batch_size: int = 512,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 HWC images; ``tta``: mean of softmax(original) and softmax(flipped).

    ``mean``/``std`` are the training statistics stored in the checkpoint's ``normalization``.
    ``device`` defaults to the model's.
    """
    passes = _softmax_passes(model, images, mean, std, (False, True) if tta else (False,), batch_size, device)
    return sum(passes) / len(passes)


def write_submission(ids, labels, path: str | os.PathLike) -> Path:
    """The Kaggle CSV: header ``ID,Labels``, one row per image in the given (the pickle's) id order.

    Written atomically: the file either appears complete or not at all.
    """
    ids, labels = np.asarray(ids), np.asarray(labels)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must be integers in 0..9")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder, expected a CSV file name")
    frame = pd.DataFrame({SUBMISSION_HEADER[0]: ids, SUBMISSION_HEADER[1]: labels.astype(np.int64)})
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return path


def predict_file(checkpoint: str | os.PathLike, test_file: str | os.PathLike, out: str | os.PathLike,
                 tta: bool = True, device: str = "auto", batch_size: int = 512) -> dict:
    """Checkpoint + Kaggle pickle -> submission CSV. Returns a small summary (counts per class, paths)."""
    from .data import load_kaggle_test  # imported here so `import lib.predict` stays light

    if Path(out).is_dir():
        raise UserError(f"--out {out}: is a folder, expected a CSV file name")
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, dev)
    images, ids = load_kaggle_test(test_file)
    norm = ckpt["normalization"]
    proba = predict_proba(model, images, norm["mean"], norm["std"], tta=tta, batch_size=batch_size, device=dev)
    labels = proba.argmax(1)
    write_submission(ids, labels, out)
    return {"out": str(out), "n": int(len(ids)), "tta": tta,
            "class_counts": np.bincount(labels, minlength=proba.shape[1]).tolist()}


def validation_split(ckpt: dict, data_dir: str | os.PathLike | None = None):
    """(Splits, mismatches): the checkpoint's run's validation split rebuilt from its config (val_source,
    holdout_fraction, train/val size, seed), from ``data_dir`` (default: the run's own ``data_dir``); mismatches
    say where these data differ from what the run validated on (source, size)."""
    from .data import load_splits

    cfg = RunConfig.from_dict(ckpt["config"])
    splits = load_splits(data_dir if data_dir is not None else cfg.data_dir, val_source=cfg.val_source,
                         holdout_fraction=cfg.holdout_fraction, train_size=cfg.train_size,
                         val_size=cfg.val_size, seed=cfg.seed)
    trained_on = ckpt.get("data") or {}
    mismatches = []
    if trained_on.get("source") not in (None, splits.source):
        mismatches.append(f"the run validated on {trained_on['source']} data, this split is {splits.source} data")
    if trained_on.get("n_val") not in (None, len(splits.val_y)):
        mismatches.append(f"the run validated on {trained_on['n_val']} images, this split has "
                          f"{len(splits.val_y)}")
    return splits, mismatches


def evaluate(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int = 512) -> dict:
    """Accuracy of a checkpoint on its run's validation split, without and with flip TTA.

    The split is rebuilt from the checkpoint's config (val_source, holdout_fraction, train/val size, seed);
    ``data_dir`` overrides where the data lives (default: the run's own ``data_dir``).
    """
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, dev)
    splits, warnings = validation_split(ckpt, data_dir)
    norm = ckpt["normalization"]
    plain, flipped = _softmax_passes(model, splits.val_x, norm["mean"], norm["std"], (False, True),
                                     batch_size, dev)
    y = np.asarray(splits.val_y)
    return {
        "checkpoint": str(checkpoint),
        "model": ckpt["model_config"].get("name"),
        "epoch": ckpt.get("epoch"),
        "n_val": int(len(y)),
        "val_acc": float((plain.argmax(1) == y).mean()),
        "val_acc_tta": float(((plain + flipped).argmax(1) == y).mean()),
        "best_val_acc_recorded": ckpt.get("best_val_acc"),
        "data_source": splits.source,
        "data_description": splits.description,
        "warnings": warnings,
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lib.predict",
                       description="Predict a Kaggle test pickle (writes the submission CSV) and/or evaluate a "
                                   "checkpoint on its validation split, with two-pass flip TTA.")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or a run folder: its best.pt)")
    p.add_argument("--test-file", help="Kaggle test pickle (keys data, ids; N x 3072 or N x 32 x 32 x 3)")
    p.add_argument("--out", help="submission CSV to write (ID,Labels); required with --test-file")
    p.add_argument("--evaluate", action="store_true", help="print validation accuracy without and with TTA")
    p.add_argument("--data-dir", help="with --evaluate: where CIFAR-10 lives (default: the run's data_dir)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="single pass, no flip averaging")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    args = p.parse_args(argv)
    if args.test_file is None and not args.evaluate:
        p.error("nothing to do: give --test-file PKL --out CSV, or --evaluate")
    if args.test_file is not None and args.out is None:
        p.error("--out is required with --test-file")
    if args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size}: must be >= 1")

    if args.evaluate:
        r = evaluate(args.checkpoint, args.data_dir, device=args.device, batch_size=args.batch_size)
        for w in r["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(f"{r['checkpoint']} ({r['model']}, epoch {r['epoch']}) on {r['data_description']}")
        print(f"val accuracy without TTA: {100 * r['val_acc']:.2f}%  ({r['n_val']} images)")
        print(f"val accuracy with flip TTA: {100 * r['val_acc_tta']:.2f}%")
    if args.test_file is not None:
        r = predict_file(args.checkpoint, args.test_file, args.out, tta=args.tta, device=args.device,
                         batch_size=args.batch_size)
        print(f"wrote {r['out']}: {r['n']} predictions ({'flip TTA' if r['tta'] else 'no TTA'}); "
              f"per class {r['class_counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
