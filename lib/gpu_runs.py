"""Table 1 on one GPU inside a time budget: measure an epoch of each model, decide whether the four runs share
the GPU at once or go one after another, pick the longest schedule that fits, run ``python -m lib.train`` for
each model, then an A/B of RobustResNet64's two loaders. A hard deadline ends whatever still runs (SIGTERM, so
the last finished epoch stays in the run folder).

    python -m lib.gpu_runs all --minutes 8                                    # make gpu-check: measure, plan, run
    python -m lib.gpu_runs measure --out runs/gpu                             # a short GPU window, part 1
    python -m lib.gpu_runs run --out runs/gpu --measure runs/gpu/measure.json --minutes 7.5   # part 2
    python -m lib.gpu_runs all --device cpu --profile smoke --minutes 3      # dry run on the CPU

Each run is the paper profile (every setting of the report's recipe) except ``--epochs``. OUT receives
measure/ (the one-epoch sizing runs), table1/<model>/ and ab/<loader>/ (complete run folders: config.json,
history.csv, train.log, checkpoints), measure.json and summary.json (plan, prediction, outcome).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import ArgumentParser, UserError, atomic_write_text, run_cli

TABLE1_MODELS = ("light_resnet18", "light_resnet18_v2", "light_resnet18_v2_b45", "robust_resnet64")
FULL_MODEL, FULL_EPOCHS = "robust_resnet64", 300  # the run the report is judged by, at the paper's length
SAFETY = 0.9        # plan for 90% of the time left: epoch times jitter and the last validation must fit too
GRACE_S = 10.0      # SIGTERM this long before the deadline, SIGKILL just before it: the budget is never exceeded
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------
# Planning: pure functions of measured times (tests/test_gpu_runs.py checks them by hand)
# ----------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One model's measured times, in seconds."""
    epoch_s: float                     # one epoch (training + validation) alone on the device
    overhead_s: float                  # the rest of a run: start, data loading, model set-up
    concurrent_epoch_s: float | None = None  # one epoch while all the models train at once
    concurrent_overhead_s: float | None = None  # the rest of such a run (starts compete for the CPU too)

    @property
    def overhead_together_s(self) -> float:
        return self.overhead_s if self.concurrent_overhead_s is None else self.concurrent_overhead_s


def fit(budget_s: float, overhead_s: float, epoch_s: float) -> int:
    """Whole epochs that fit: overhead + n * epoch <= budget (0 if none)."""
    return max(0, math.floor((budget_s - overhead_s) / epoch_s + 1e-9))


def plan_sequential(m: dict[str, Measured], budget_s: float, full: bool) -> dict[str, int]:
    """One run after another. Every model gets the same n (comparable rows), or with ``full`` the full model
    gets FULL_EPOCHS first and the others share what is left."""
    epochs: dict[str, int] = {}
    others = dict(m)
    if full:
        r = others.pop(FULL_MODEL)
        epochs[FULL_MODEL] = FULL_EPOCHS
        budget_s -= r.overhead_s + FULL_EPOCHS * r.epoch_s
    if others:
        n = fit(budget_s, sum(x.overhead_s for x in others.values()), sum(x.epoch_s for x in others.values()))
        epochs.update(dict.fromkeys(others, min(n, FULL_EPOCHS)))
    return epochs


def plan_concurrent(m: dict[str, Measured], budget_s: float, full: bool) -> dict[str, int]:
    """All runs at once; each model's time is overhead + n * (its epoch time while all four run), an upper
    bound because the others speed up when the first ones finish."""
    others = {k: x for k, x in m.items() if not (full and k == FULL_MODEL)}
    n = min((fit(budget_s, x.overhead_together_s, x.concurrent_epoch_s) for x in others.values()), default=0)
    epochs = dict.fromkeys(others, min(n, FULL_EPOCHS))
    if full:
        epochs[FULL_MODEL] = FULL_EPOCHS
    return epochs


def predicted_seconds(m: dict[str, Measured], epochs: dict[str, int], mode: str) -> float:
    if mode == "sequential":
        return sum(m[k].overhead_s + n * m[k].epoch_s for k, n in epochs.items() if n > 0)
    runs = [(m[k].overhead_together_s, n * m[k].concurrent_epoch_s) for k, n in epochs.items() if n > 0]
    return max((o + t for o, t in runs), default=0.0)


def choose_plan(m: dict[str, Measured], budget_s: float) -> dict[str, Any]:
    """The plan that trains the most: the full reproduction of FULL_MODEL when it fits, then the most epochs for
    every row; concurrent only where it was measured and beats one-after-another. Every candidate's predicted
    time is within ``budget_s``."""
    modes = ["sequential"] + (["concurrent"] if all(x.concurrent_epoch_s for x in m.values()) else [])
    candidates = []
    for mode in modes:
        planner = plan_sequential if mode == "sequential" else plan_concurrent
        for full in ((False, True) if FULL_MODEL in m else (False,)):
            epochs = planner(m, budget_s, full)
            seconds = predicted_seconds(m, epochs, mode)
            # a shortened plan must train every model; the full reproduction may leave the others out
            if seconds <= budget_s and (full or min(epochs.values()) >= 1):
                score = (epochs.get(FULL_MODEL, 0) >= FULL_EPOCHS, min(epochs.values()), -seconds)
                candidates.append((score, {"mode": mode, "epochs": epochs, "predicted_s": seconds,
                                           "full_reproduction": full}))
    if not candidates:
        raise UserError(f"--minutes: {budget_s:.0f} s left for training is not enough for one epoch of every "
                        f"model (measured: {', '.join(f'{k} {x.epoch_s:.1f} s' for k, x in m.items())})")
    best = max(candidates, key=lambda c: c[0])[1]
    best["alternatives"] = [c[1] for c in candidates if c[1] is not best]
    return best


def plan_ab(epoch_device_s: float, epoch_torchvision_s: float, overhead_s: float, budget_s: float,
            max_epochs: int = 15) -> int:
    """Epochs of the loader A/B: the two runs go at once (the torchvision loader works on the CPU, the device
    loader on the GPU), planned as if one after the other, an upper bound; same schedule for both."""
    return min(max_epochs, fit(budget_s, 2 * overhead_s, epoch_device_s + epoch_torchvision_s))


# ----------------------------------------------------------------------------------------------------
# Running lib.train children under a deadline
# ----------------------------------------------------------------------------------------------------
def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class Launcher:
    """Starts ``python -m lib.train`` runs with the shared settings; waits for them until a deadline."""

    def __init__(self, args, python: str = sys.executable):
        self.args, self.python = args, python

    def command(self, model: str, out: Path, epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
        a = self.args
        cmd = [self.python, "-m", "lib.train", "--profile", a.profile, "--model", model, "--out", str(out),
               "--epochs", str(epochs), "--seed", str(a.seed), "--device", a.device, "--no-progress"]
        for flag, value in (("--data-dir", a.data_dir), ("--train-size", a.train_size), ("--val-size", a.val_size)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd + shlex.split(a.train_args) + list(extra)

    def run(self, jobs: dict[str, tuple[str, Path, int, tuple[str, ...]]], deadline: float) -> dict[str, Any]:
        """Start every job at once; wait until all end, stopping what still runs with SIGTERM GRACE_S before the
        deadline (SIGKILL a second before it). Returns per job: wall time, exit code, whether it was stopped,
        and its history."""
        procs, started, ended, stopped = {}, {}, {}, set()
        try:
            for name, (model, out, epochs, extra) in jobs.items():
                out.mkdir(parents=True, exist_ok=True)
                log = open(out / "train.log", "w")
                procs[name] = subprocess.Popen(self.command(model, out, epochs, extra), cwd=REPO, stdout=log,
                                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                log.close()
                started[name] = time.monotonic()
            while len(ended) < len(procs):
                now = time.monotonic()
                for name, p in procs.items():
                    if name not in ended and p.poll() is not None:
                        ended[name] = now
                if now >= deadline - GRACE_S and not stopped:
                    stopped = {n for n in procs if n not in ended}
                    for n in stopped:
                        print(f"deadline: stopping {n} (SIGTERM)", file=sys.stderr)
                        procs[n].send_signal(signal.SIGTERM)
                if stopped and now >= deadline - 1:
                    for n in stopped - set(ended):
                        procs[n].kill()
                time.sleep(0.2)
        finally:  # an interrupted driver takes its children with it
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
        results = {}
        for name, (model, out, epochs, _) in jobs.items():
            history = read_history(out)
            # lib.train writes config.json just before its first epoch and history.csv after each epoch's
            # checkpoints: between the two lies every epoch with its validation and checkpoint writes
            cfg, hist = out / "config.json", out / "history.csv"
            epochs_wall = hist.stat().st_mtime - cfg.stat().st_mtime if history and cfg.exists() else None
            results[name] = {"model": model, "out": str(out), "epochs_planned": epochs,
                             "epochs_done": len(history), "returncode": procs[name].returncode,
                             "stopped_at_deadline": name in stopped, "wall_s": ended[name] - started[name],
                             "epoch_s": [round(r["epoch_seconds"], 3) for r in history],
                             "epochs_wall_s": epochs_wall,
                             "final_val_acc": history[-1]["val_acc"] if history else None,
                             "best_val_acc": history[-1]["best_val_acc"] if history else None}
        return results


def _check_ok(results: dict[str, Any], what: str) -> None:
    bad = {k: r for k, r in results.items() if r["epochs_done"] == 0}
    if bad:
        k, r = next(iter(bad.items()))
        if r["stopped_at_deadline"]:
            raise UserError(f"--minutes: the budget ran out during {what} ({k} had not finished its epoch)")
        tail = Path(r["out"], "train.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{what}: {k} finished no epoch (exit {r['returncode']}): " + " | ".join(tail))


# ----------------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------------
def measure(args, launcher: Launcher, deadline: float) -> dict[str, Any]:
    """One epoch of each model alone, RobustResNet64 with the torchvision loader alone (for the A/B's size), then
    one epoch of all models at once. Overhead = a run's wall time minus its epoch (start-up, data, teardown)."""
    root = Path(args.out) / "measure"
    seq = {}
    for model in args.models:
        seq.update(launcher.run({model: (model, root / f"seq_{model}", 1, ())}, deadline))
    if args.ab and FULL_MODEL in args.models:
        seq.update(launcher.run({"ab_torchvision": (FULL_MODEL, root / "seq_ab_torchvision", 1,
                                                    ("--loader", "torchvision"))}, deadline))
    _check_ok(seq, "measure (one after another)")
    t0 = time.monotonic()
    conc = launcher.run({m: (m, root / f"concurrent_{m}", 1, ()) for m in args.models}, deadline)
    conc_wall = time.monotonic() - t0
    _check_ok(conc, "measure (all at once)")
    def epoch(r):  # the epoch with its checkpoint writes (the epoch_seconds of history.csv leave them out)
        return max(r["epoch_s"][0], r["epochs_wall_s"] or 0)

    models = {m: {"epoch_s": epoch(seq[m]), "overhead_s": seq[m]["wall_s"] - epoch(seq[m]),
                  "concurrent_epoch_s": epoch(conc[m]), "concurrent_wall_s": conc[m]["wall_s"]}
              for m in args.models}
    result = {"device": args.device, "models": models,
              "sequential_wall_s": sum(seq[m]["wall_s"] for m in args.models), "concurrent_wall_s": conc_wall}
    if "ab_torchvision" in seq:
        result["torchvision_loader_epoch_s"] = epoch(seq["ab_torchvision"])
    return result


def run_phase(args, launcher: Launcher, meas: dict[str, Any], start: float, deadline: float) -> dict[str, Any]:
    m = {k: Measured(v["epoch_s"], v["overhead_s"], v.get("concurrent_epoch_s"),
                     v.get("concurrent_wall_s", 0) - v.get("concurrent_epoch_s", 0) or None)
         for k, v in meas.get("models", {}).items() if k in args.models}
    missing = [k for k in args.models if k not in m]
    if missing:
        raise UserError(f"--measure: no measurement for {', '.join(missing)}")
    left = deadline - time.monotonic()
    want_ab = args.ab and FULL_MODEL in m and "torchvision_loader_epoch_s" in meas
    table_budget = SAFETY * left * (1 - (args.ab_share if want_ab else 0))
    plan = choose_plan(m, table_budget)
    summary: dict[str, Any] = {"budget_s": args.minutes * 60, "planned_with_s": table_budget, "plan": plan,
                               "measure": meas}
    print(f"plan: {plan['mode']}, epochs {plan['epochs']}, predicted {plan['predicted_s']:.0f} s of "
          f"{table_budget:.0f} s", file=sys.stderr)
    write_summary(args, summary, start)
    root = Path(args.out) / "table1"
    jobs = {k: (k, root / k, n, ()) for k, n in plan["epochs"].items() if n > 0}
    table_deadline = min(deadline, time.monotonic() + table_budget / SAFETY)
    if plan["mode"] == "concurrent":
        summary["table1"] = launcher.run(jobs, table_deadline)
    else:
        summary["table1"] = {}
        for k, job in jobs.items():  # a planned full reproduction comes first: the number the report is judged by
            summary["table1"].update(launcher.run({k: job}, table_deadline))
    write_summary(args, summary, start)
    if want_ab:
        r = m[FULL_MODEL]
        ab_left = SAFETY * (deadline - time.monotonic())
        n = plan_ab(r.epoch_s, meas["torchvision_loader_epoch_s"], r.overhead_s, ab_left)
        summary["ab"] = {"epochs": n, "seed": args.seed, "planned_with_s": ab_left, "together": True}
        if n >= 1:  # together: if the deadline comes, both lose the same epochs and stay comparable
            summary["ab"].update(launcher.run(
                {loader: (FULL_MODEL, Path(args.out) / "ab" / loader, n, ("--loader", loader))
                 for loader in ("device", "torchvision")}, deadline))
        else:
            summary["ab"]["skipped"] = f"{ab_left:.0f} s left: not enough for one epoch with each loader"
    return summary


def write_summary(args, summary: dict[str, Any], start: float) -> None:
    summary["elapsed_s"] = time.monotonic() - start
    atomic_write_text(Path(args.out) / "summary.json", json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lib.gpu_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("phase", nargs="?", default="all", choices=("all", "measure", "run"),
                   help="all = measure + run; measure and run split them over two GPU windows")
    p.add_argument("--out", default="runs/gpu", help="folder for the runs, measure.json and summary.json")
    p.add_argument("--minutes", type=float, default=8.0, help="hard time budget of this command (minutes)")
    p.add_argument("--measure", type=Path, help="measure.json of an earlier `measure` (phase run)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: dry run")
    p.add_argument("--profile", default="paper", choices=("paper", "smoke"),
                   help="the runs' profile: paper (the report's recipe) or smoke (dry run on synthetic data)")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: the profile's)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into the data folder if absent")
    p.add_argument("--train-size", type=int, help="subset of the training split (dry run only)")
    p.add_argument("--val-size", type=int, help="subset of the test split (dry run only)")
    p.add_argument("--train-args", default="",
                   help="more lib.train options for every run (dry run: e.g. '--base-channels 8')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(TABLE1_MODELS))
    p.add_argument("--ab-share", type=float, default=0.2, help="share of the run budget kept for the loader A/B")
    p.add_argument("--no-ab", dest="ab", action="store_false", help="skip the loader A/B")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.minutes * 60
    if args.minutes <= 0:
        raise UserError(f"--minutes {args.minutes}: must be > 0")
    if not 0 <= args.ab_share < 1:
        raise UserError(f"--ab-share {args.ab_share}: must be in [0, 1)")
    from .models import list_models
    unknown = [k for k in args.models if k not in list_models()]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}")
    if args.phase == "run" and args.measure is None:
        raise UserError("phase run needs --measure FILE (measure.json from `python -m lib.gpu_runs measure`)")
    meas = None
    if args.measure is not None:
        try:
            meas = json.loads(args.measure.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--measure {args.measure}: cannot read ({exc})") from None
    out = Path(args.out)
    taken = [d for d in ("measure", "table1", "ab") if (out / d).exists()
             and (args.phase != "run" or d != "measure")]
    if taken:
        raise UserError(f"--out {out}: already holds {', '.join(taken)}/; choose another folder or remove it")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available (use --device cpu for a dry run)")
    # the data once, here: runs started together must not all write the smoke files at once
    from .data import find_cifar_dir, load_cifar10
    from .smoke_data import ensure_smoke_data
    if args.profile == "smoke":
        ensure_smoke_data(args.data_dir or "data/smoke")
    else:
        if args.download:
            load_cifar10(args.data_dir or "data", download=True)
        find_cifar_dir(args.data_dir or "data")  # a clear error now rather than in four logs
    launcher = Launcher(args)
    if meas is None:
        meas = measure(args, launcher, deadline)
        atomic_write_text(out / "measure.json", json.dumps(meas, indent=2) + "\n")
        print(f"wrote {out / 'measure.json'}: " + ", ".join(
            f"{k} {v['epoch_s']:.1f} s/epoch ({v['concurrent_epoch_s']:.1f} s with all at once)"
            for k, v in meas["models"].items()), file=sys.stderr)
    if args.phase == "measure":
        return 0
    summary = run_phase(args, launcher, meas, start, deadline)
    write_summary(args, summary, start)
    print(json.dumps({k: {"epochs": r["epochs_done"], "best_val_acc": r["best_val_acc"]}
                      for k, r in summary["table1"].items()}, indent=1))
    if "ab" in summary:
        print("A/B:", json.dumps({k: summary["ab"][k].get("best_val_acc") for k in ("device", "torchvision")
                                  if k in summary["ab"]}))
    print(f"wrote {out / 'summary.json'} ({summary['elapsed_s']:.0f} s of {args.minutes * 60:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
