"""Where a checkpoint fails, how far its confidence can be trusted, and how it holds up under corruption.

    python -m lib.analysis --checkpoint runs/r64/best.pt --data-dir data --out runs/r64/analysis
    python -m lib.analysis --checkpoint runs/r64 --out runs/r64/analysis --corruptions contrast --severities 1,5

Evaluates the checkpoint on the validation split its run used (rebuilt from the checkpoint's config, as
``lib.predict.evaluate``) and writes to OUT_DIR: ``metrics.json``, ``predictions.npz`` (``probs`` without TTA,
``labels``, ``temperature_fit``: which rows the temperature was fitted on), ``per_class.csv``, ``confusion.csv``,
``confusion.png``, ``per_class.png``, ``reliability.png``, ``corruptions.csv``, ``corruptions.png`` and
``mistakes.png``. Everything is computed first and then written through a temporary folder, so bad input or a
failure leaves nothing half-written in OUT_DIR.

Calibration: ECE with 15 equal-width confidence bins on the top-1 probability (Guo et al. 2017); temperature
scaling fitted by minimising the NLL on a seeded random half of the evaluated images and judged on the other half.
Corruptions: ``lib.analysis.corruptions`` (CIFAR-10-C's severities), one pass per image without TTA, so
``corruptions.csv``'s accuracy compares with ``metrics.json``'s ``accuracy``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..common import ArgumentParser, UserError, resolve_device, run_cli
from ..config import RunConfig
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions

ECE_BINS = 15
PROB_FLOOR = 1e-12  # log(0) guard for the NLL and the log-probabilities temperature scaling rescales
MISTAKES_SHOWN = 24


# ----------------------------------------------------------------------------------------------------------
# Metrics on (probs N x C, labels N)
# ----------------------------------------------------------------------------------------------------------
def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(p, PROB_FLOOR)).mean())


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin (lower, upper]: count, accuracy and mean confidence of the top-1 class."""
    probs = np.asarray(probs, np.float64)
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds lower < confidence <= upper; a confidence of exactly 0 cannot occur (top-1 >= 1/C)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, correct.astype(np.float64), n_bins) / count
        conf = np.bincount(which, confidence, n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count, "accuracy": acc,
                         "confidence": conf})


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """sum over bins of (share of images) * |accuracy - mean confidence|."""
    bins = calibration_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    gaps = (bins["accuracy"] - bins["confidence"]).abs()[filled]
    return float((bins["count"][filled] * gaps).sum() / bins["count"].sum())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): temperature scaling of the logits, which log p equals up to a per-row constant."""
    z = np.log(np.maximum(np.asarray(probs, np.float64), PROB_FLOOR)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T in ``bounds`` minimising the NLL of ``apply_temperature(probs, T)``.

    Golden-section search on log T: the NLL is convex in 1/T, hence unimodal in log T. T = 1 is kept unless
    the search found a lower NLL, so the fitted T never raises the NLL on the data it was fitted on.
    """
    def loss(log_t: float) -> float:
        return nll(apply_temperature(probs, float(np.exp(log_t))), labels)

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks by 0.618 per step: 60 steps reach ~1e-12 in log T
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = (a + b) / 2
    return float(np.exp(best)) if loss(best) < loss(0.0) else 1.0


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(predicted),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class(confusion: np.ndarray, names) -> pd.DataFrame:
    """precision, recall, f1 and support per class from a confusion matrix (0 where undefined, as sklearn)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return pd.DataFrame({"class": list(names), "precision": precision, "recall": recall, "f1": f1,
                         "support": support})


# ----------------------------------------------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------------------------------------------
def _load(checkpoint, data_dir, device, download: bool = False):
    """(model, ckpt, splits) for the checkpoint's validation split; UserError when the data is not that split.
    ``download``: fetch the official CIFAR-10 archive first when the data folder holds no copy (a new runtime)."""
    from ..data import find_cifar_dir, load_cifar10
    from ..predict import load_checkpoint, validation_split

    model, ckpt = load_checkpoint(checkpoint, device)
    if download:
        where = data_dir if data_dir is not None else RunConfig.from_dict(ckpt["config"]).data_dir
        try:
            find_cifar_dir(where)
        except UserError:  # none there, or a partial copy: fetch the official archive
            load_cifar10(where, download=True)
    splits, mismatches = validation_split(ckpt, data_dir)
    if mismatches:  # analysing other data than the run's split would mislabel every number
        data_dir = RunConfig.from_dict(ckpt["config"]).data_dir if data_dir is None else data_dir
        raise UserError(f"--data-dir {data_dir}: {mismatches[0]}")
    return model, ckpt, splits


def analyze(checkpoint, data_dir=None, corruptions=tuple(CORRUPTIONS), severities=SEVERITIES, tta: bool = True,
            device: str = "auto", seed: int = 0, batch_size: int = 512, progress: bool = True,
            download: bool = False) -> dict:
    """Compute everything ``write_analysis`` writes; returns {"metrics", "probs", "labels", "fit", "tables",
    "figures"} (tables and figures by file name). ``download``: as ``lib.data.load_cifar10``'s, when the data
    folder holds no CIFAR-10."""
    from . import plots
    from ..predict import _softmax_passes

    dev = resolve_device(device)
    model, ckpt, splits = _load(checkpoint, data_dir, dev, download)
    norm, names = ckpt["normalization"], list(splits.label_names)
    labels = np.asarray(splits.val_y)

    def passes(images, with_flip):
        return _softmax_passes(model, images, norm["mean"], norm["std"], (False, True) if with_flip else (False,),
                               batch_size, dev)

    outs = passes(splits.val_x, tta)
    probs = outs[0]
    n = len(labels)
    fit = np.zeros(n, bool)  # seeded random half for fitting the temperature; the rest judges it
    fit[np.random.default_rng(seed).permutation(n)[:n // 2]] = True
    temperature = fit_temperature(probs[fit], labels[fit])
    held, scaled = probs[~fit], apply_temperature(probs[~fit], temperature)

    cfg = RunConfig.from_dict(ckpt["config"])
    metrics = {
        "checkpoint": str(checkpoint), "model": ckpt["model_config"].get("name"),
        "checkpoint_epoch": ckpt.get("epoch"), "best_val_acc_recorded": ckpt.get("best_val_acc"),
        "data": splits.description, "data_source": splits.source,
        "split": {"val_source": cfg.val_source, "holdout_fraction": cfg.holdout_fraction,
                  "train_size": cfg.train_size, "val_size": cfg.val_size, "seed": cfg.seed},
        "n": int(n),
        "accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
        "ece": expected_calibration_error(probs, labels), "ece_bins": ECE_BINS,
        "accuracy_tta": accuracy((outs[0] + outs[1]) / 2, labels) if tta else None,
        "temperature": temperature,
        "temperature_fit": f"NLL minimised on a seeded random half ({int(fit.sum())} images, seed {seed}); "
                           f"the *_temperature metrics are on the other {int((~fit).sum())}",
        "nll_before_temperature": nll(held, labels[~fit]), "nll_after_temperature": nll(scaled, labels[~fit]),
        "ece_before_temperature": expected_calibration_error(held, labels[~fit]),
        "ece_after_temperature": expected_calibration_error(scaled, labels[~fit]),
        "corruption_seed": seed, "tta": tta,
    }

    predicted = probs.argmax(1)
    confusion = pd.DataFrame(confusion_matrix(labels, predicted, len(names)), index=pd.Index(names, name="true"),
                             columns=names)
    table = per_class(confusion.to_numpy(), names)
    rows = []
    for name in corruptions:
        for severity in severities:
            # one pass, no TTA: comparable with "accuracy", at half the cost of the grid
            out = passes(corrupt(splits.val_x, name, severity, seed), False)
            rows.append({"corruption": name, "severity": severity, "accuracy": accuracy(out[0], labels)})
        if progress:
            print(f"{name:>17}: " + "  ".join(f"{r['severity']}: {100 * r['accuracy']:5.1f}%"
                                              for r in rows[-len(severities):]), file=sys.stderr, flush=True)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:MISTAKES_SHOWN]

    where = f"{metrics['model']}, epoch {metrics['checkpoint_epoch']}, {n} validation images ({splits.source})"
    tables = {"per_class.csv": table, "confusion.csv": confusion}
    figures = {
        "confusion.png": plots.confusion_figure(confusion, f"Confusion matrix: {where}"),
        "per_class.png": plots.per_class_figure(table, f"Per class: {where}"),
        "reliability.png": plots.reliability_figure({
            f"before temperature scaling: ECE {100 * metrics['ece_before_temperature']:.2f}%":
                calibration_bins(held, labels[~fit]),
            f"after (T = {temperature:.2f}): ECE {100 * metrics['ece_after_temperature']:.2f}%":
                calibration_bins(scaled, labels[~fit])}),
        "mistakes.png": plots.mistakes_figure(splits.val_x[wrong], [names[i] for i in labels[wrong]],
                                              [names[i] for i in predicted[wrong]], probs[wrong].max(1)),
    }
    if rows:
        frame = pd.DataFrame(rows)
        tables["corruptions.csv"] = frame
        figures["corruptions.png"] = plots.corruption_figure(frame, metrics["accuracy"])
    return {"metrics": metrics, "probs": probs, "labels": labels, "fit": fit, "tables": tables,
            "figures": figures}


def write_analysis(result: dict, out: str | os.PathLike) -> list[Path]:
    """Write everything into a temporary folder next to OUT_DIR, then move the files in: OUT_DIR never holds a
    half-written file, and a failure before the move leaves it as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        (tmp / "metrics.json").write_text(json.dumps(result["metrics"], indent=2) + "\n")
        np.savez_compressed(tmp / "predictions.npz", probs=result["probs"], labels=result["labels"],
                            temperature_fit=result["fit"])
        for name, frame in result["tables"].items():
            frame.to_csv(tmp / name, index=name == "confusion.csv", lineterminator="\n")
        for name, fig in result["figures"].items():
            fig.savefig(tmp / name, dpi=130)
        out.mkdir(exist_ok=True)
        written = []
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)  # atomic per file, same filesystem
            written.append(out / path.name)
    for stale in ("corruptions.csv", "corruptions.png"):  # from an earlier run of the grid, now --corruptions none
        if out / stale not in written:
            (out / stale).unlink(missing_ok=True)
    return written


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def _corruption_list(text: str) -> list[str]:
    if text.strip() == "none":
        return []
    try:
        return parse_corruptions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--corruptions {text!r}: ")) from None


def _severity_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers 1..5 separated by commas") from None
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: severity {bad[0] if bad else '(none given)'} is outside 1..5")
    return sorted(set(values))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lib.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or a run folder: its best.pt)")
    p.add_argument("--data-dir", help="where CIFAR-10 lives (default: the run's data_dir)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for the analysis files")
    p.add_argument("--corruptions", type=_corruption_list, default="all",
                   help=f"all, none, or a comma list of: {', '.join(CORRUPTIONS)}")
    p.add_argument("--severities", type=_severity_list, default="1,2,3,4,5", help="comma list of 1..5")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="skip the flipped pass (no accuracy_tta)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--download", action="store_true",
                   help="fetch the official CIFAR-10 archive (MD5-checked) when the data folder holds none")
    p.add_argument("--seed", type=int, default=0, help="seeds the corruptions and the temperature-fitting half")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size}: must be >= 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out}: is a file, expected a folder")
    resolve_device(args.device)  # a bad --device fails before any file is read

    result = analyze(args.checkpoint, args.data_dir, args.corruptions, args.severities, tta=args.tta,
                     device=args.device, seed=args.seed, batch_size=args.batch_size, download=args.download)
    written = write_analysis(result, args.out)
    m = result["metrics"]
    print(f"{m['model']} epoch {m['checkpoint_epoch']} on {m['data']}")
    tta = f", {100 * m['accuracy_tta']:.2f}% with flip TTA" if m["accuracy_tta"] is not None else ""
    print(f"accuracy {100 * m['accuracy']:.2f}%{tta}; NLL {m['nll']:.3f}; ECE {100 * m['ece']:.2f}%; "
          f"T = {m['temperature']:.2f}: ECE {100 * m['ece_before_temperature']:.2f}% -> "
          f"{100 * m['ece_after_temperature']:.2f}% on the held-out half")
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
