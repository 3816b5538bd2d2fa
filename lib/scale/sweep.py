"""Hyper-parameter sweeps on Ray Tune: every trial is an ordinary ``lib.train`` run folder.

    python -m lib.scale.sweep --profile smoke --model light_resnet18 --param dropout=0.0,0.1 --param lr=0.05,0.1 \\
        --out runs/sweep_dropout_lr                          # a 2 x 2 grid on a local, in-process Ray
    python -m lib.scale.sweep ... --search random --samples 8      # 8 random draws from the value lists
    python -m lib.scale.sweep ... --scheduler asha                 # ASHA stops weak trials at epochs 1, 2, 4, ...
    python -m lib.scale.sweep ... --address auto                   # join a running cluster (`ray start --head`)
    python -m lib.scale.sweep ... --out runs/sweep_dropout_lr --resume   # continue an interrupted sweep

SWEEP_DIR receives sweep.json (the sweep's settings), sweep.csv (one row per trial: its values, status, epochs
done, best and final val acc, run folder), runs/NNN_<values>/ (one lib.train run folder per trial) and tune/
(Ray Tune's experiment state, which ``--resume`` restores). Options of ``lib.train`` given here (``--epochs 4``)
hold for every trial. Ray is imported only by this module: training and notebooks never need it.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import socket
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..common import ArgumentParser, UserError, atomic_path, atomic_write_text, run_cli
from ..config import RunConfig, add_config_arguments, make_config

SWEEP_FORMAT = 1
HISTORY_METRICS = ("val_acc", "val_loss", "best_val_acc", "train_acc", "train_loss")
NOT_SWEPT = ("out", "resume", "profile", "sync_bn")  # set by the sweep itself; sync_bn: trials are 1 process
# Sweep settings that may differ on --resume: where and how wide it runs, not what it computes.
RESUME_MAY_CHANGE = {"address", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "resume"}
STATUS = {"TERMINATED": "finished", "ERROR": "failed", "RUNNING": "running", "PENDING": "pending",
          "PAUSED": "pending"}


# ----------------------------------------------------------------------------------------------------
# The sweep's specification: parsed, validated for every combination, stored in SWEEP_DIR/sweep.json
# ----------------------------------------------------------------------------------------------------
class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def _value_parser() -> argparse.ArgumentParser:
    """lib.train's own option parser, so a swept value is converted exactly as on its command line."""
    p = _RaisingParser(add_help=False)
    add_config_arguments(p)
    return p


def parse_param(text: str) -> tuple[str, list[Any]]:
    """``"dropout=0.0,0.1"`` -> ``("dropout", [0.0, 0.1])``, each value converted as lib.train's option."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    known = [f.name for f in fields(RunConfig) if f.name not in NOT_SWEPT]
    if not sep or not name:
        raise UserError(f"--param {text!r}: expected NAME=V1,V2,... (e.g. dropout=0.0,0.1)")
    if name not in known:
        raise UserError(f"--param {name}: unknown setting; choose from {', '.join(known)}")
    items = [v.strip() for v in (values.split(";") if name == "widths" else values.split(",")) if v.strip()]
    if not items:
        raise UserError(f"--param {name}: empty value list")
    parser, flag = _value_parser(), "--" + name.replace("_", "-")
    out = []
    for item in items:
        if RunConfig.__dataclass_fields__[name].type in ("bool", "Optional[bool]"):
            if item.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise UserError(f"--param {name}={item}: expected true or false")
            out.append(item.lower() in ("true", "1", "yes"))
            continue
        try:
            out.append(getattr(parser.parse_args([flag, item]), name))
        except UserError as exc:
            raise UserError(f"--param {name}={item}: {exc}") from None
    if len(set(map(repr, out))) != len(out):
        raise UserError(f"--param {name}: a value is listed twice")
    return name, out


def combinations(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(params, values)) for values in itertools.product(*params.values())]


def trial_config(spec: dict[str, Any], values: dict[str, Any], out: str = "") -> RunConfig:
    """The RunConfig of one trial: profile, fixed settings, then the trial's swept values."""
    settings = {**spec["fixed"], **values}
    if out:
        settings["out"] = out
    return make_config(spec["profile"], **settings)


def validate_spec(spec: dict[str, Any]) -> None:
    """Build and validate the RunConfig (so also the architecture) of every combination: a value the option
    rejects fails here, before Ray starts, instead of as a failed trial."""
    for values in combinations(spec["params"]):
        try:
            trial_config(spec, values)
        except UserError as exc:
            raise UserError(f"--param {', '.join(f'{k}={v}' for k, v in values.items())}: {exc}") from None


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    if not args.param:
        raise UserError("--param: give at least one NAME=V1,V2,... to sweep")
    params: dict[str, list[Any]] = {}
    for text in args.param:
        name, values = parse_param(text)
        if name in params:
            raise UserError(f"--param {name}: given twice")
        params[name] = values
    train_options = {f.name for f in fields(RunConfig)} - set(NOT_SWEPT)
    fixed = {k: v for k, v in vars(args).items() if k in train_options and v is not None}
    both = sorted(set(fixed) & set(params))
    if both:
        raise UserError(f"--{both[0].replace('_', '-')} and --param {both[0]}: give a setting one way, not both")
    fixed.setdefault("progress", False)  # a progress bar per trial garbles Ray's interleaved trial logs
    if "data_dir" not in fixed:  # trials run in Ray workers with their own working directory
        fixed["data_dir"] = make_config(args.profile or "paper").data_dir
    fixed["data_dir"] = str(Path(fixed["data_dir"]).resolve())
    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: must be >= 1")
    if args.search == "grid" and args.samples != 1:
        raise UserError("--samples: a grid runs each combination once; use --search random, or sweep "
                        "--param seed=0,1,2 to repeat runs")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0 or args.max_concurrent < 0:
        raise UserError("--cpus-per-trial must be > 0, --gpus-per-trial and --max-concurrent >= 0")
    spec = {"format": SWEEP_FORMAT, "profile": args.profile or "paper", "fixed": fixed, "params": params,
            "search": args.search, "samples": args.samples, "search_seed": args.search_seed,
            "scheduler": args.scheduler, "metric": args.metric, "grace_period": args.grace_period,
            "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "max_concurrent": args.max_concurrent, "address": args.address}
    validate_spec(spec)
    return spec


def check_sweep_dir(sweep_dir: Path, spec: dict[str, Any], resume: bool) -> bool:
    """True when SWEEP_DIR holds this sweep to continue; UserError for a different sweep or a missing --resume."""
    stored_path = sweep_dir / "sweep.json"
    if not stored_path.exists():
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise UserError(f"--out {sweep_dir}: not empty and holds no sweep.json; choose a new folder")
        return False
    try:
        stored = json.loads(stored_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{stored_path}: not valid JSON ({exc})") from None
    diff = sorted(k for k in set(stored) | set(spec)
                  if k not in RESUME_MAY_CHANGE and stored.get(k) != json.loads(json.dumps(spec.get(k))))
    if diff:
        raise UserError(f"--out {sweep_dir}: holds a different sweep ({', '.join(diff)} differ; see "
                        f"{stored_path}); choose another --out")
    if not resume:
        raise UserError(f"--out {sweep_dir}: already holds this sweep; pass --resume to continue it")
    return True


# ----------------------------------------------------------------------------------------------------
# Trials: run folders and sweep.csv
# ----------------------------------------------------------------------------------------------------
def trial_index(trial_id: str) -> int:
    """Tune numbers the trials it generates (``<experiment>_00003``): the index of the grid point or draw."""
    return int(trial_id.rsplit("_", 1)[-1])


def run_folder(sweep_dir: str | os.PathLike, index: int, values: dict[str, Any]) -> Path:
    label = "_".join(f"{k}{','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items())
    return Path(sweep_dir) / "runs" / f"{index:03d}_{label}"


def read_history(run_dir: Path) -> list[dict[str, float]]:
    try:
        with open(run_dir / "history.csv", newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def run_trial(config: dict[str, Any], spec: dict[str, Any], sweep_dir: str) -> None:
    """Ray Tune function trainable: one lib.train run, reporting every epoch's history row to Tune."""
    import torch
    from ray import tune

    from ..train import train

    run_dir = run_folder(sweep_dir, trial_index(tune.get_context().get_trial_id()), config)
    cfg = trial_config(spec, config, out=str(run_dir))
    cfg.resume = (run_dir / "last.pt").exists()  # a restarted trial continues where it stopped
    torch.set_num_threads(max(1, int(spec["cpus_per_trial"])))
    history = read_history(run_dir)
    if len(history) >= cfg.epochs and (run_dir / "last.pt").exists():
        # Finished before the sweep was interrupted: report its last epoch instead of training again.
        tune.report(history[-1])
        return
    train(cfg, on_epoch=tune.report)


def sweep_rows(sweep_dir: Path, spec: dict[str, Any], trials) -> list[dict[str, Any]]:
    """One sweep.csv row per Tune trial, epochs and accuracies read from the trial's own history.csv."""
    rows = []
    for trial in sorted(trials, key=lambda t: trial_index(t.trial_id)):
        values = {k: trial.config[k] for k in spec["params"]}
        run_dir = run_folder(sweep_dir, trial_index(trial.trial_id), values)
        history = read_history(run_dir)
        epochs = trial_config(spec, values).epochs
        status = STATUS.get(trial.status, trial.status.lower())
        if status == "finished" and len(history) < epochs:
            status = "stopped early"  # the scheduler ended it before its last epoch
        rows.append({"trial": trial_index(trial.trial_id), **values, "status": status,
                     "epochs_done": len(history), "epochs": epochs,
                     "best_val_acc": history[-1]["best_val_acc"] if history else "",
                     "final_val_acc": history[-1]["val_acc"] if history else "",
                     "run_dir": str(run_dir.relative_to(sweep_dir))})
    return rows


def write_sweep_csv(sweep_dir: Path, spec: dict[str, Any], trials) -> Path:
    rows = sweep_rows(sweep_dir, spec, trials)
    path = sweep_dir / "sweep.csv"
    columns = ["trial", *spec["params"], "status", "epochs_done", "epochs", "best_val_acc", "final_val_acc",
               "run_dir"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    return path


# ----------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------
def _check_reachable(address: str) -> None:
    """Fail fast on an address nobody listens on (ray.init would retry for a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"--address {address}: cannot reach {host}:{port} ({exc.strerror or exc})") from None


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join ``address``, or start a light in-process local Ray; True if this call started/joined it."""
    import ray

    if address:
        _check_reachable(address)
    if ray.is_initialized():  # a notebook or test that already holds a Ray session
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    repo_root = str(Path(__file__).resolve().parent.parent)
    try:
        if address:
            # ship lib/ to the cluster's workers, which need not have this checkout on their path
            ray.init(address=address, logging_level="WARNING",
                     runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
        else:
            # workers inherit this environment: make `import lib` work wherever Tune puts them
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH"))
                                                       if p)
            for attempt in (1, 2, 3):
                try:  # light: no dashboard, a small object store (trials exchange only metrics)
                    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=100 * 2**20,
                             logging_level="WARNING")
                    break
                except ConnectionError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
                    # The raylet waits only 15 s for its Python agents; on a loaded machine their first import
                    # can take longer. A later start finds the files in the page cache.
                    ray.shutdown()
                    if attempt == 3 or "timed out during startup" not in str(exc):
                        raise
                    print(f"Ray start-up timed out ({exc}); trying once more", file=sys.stderr)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: {exc}") from None
    return True


def run_sweep(spec: dict[str, Any], sweep_dir: Path, resume: bool = False):
    """Run (or continue) the sweep with Ray Tune; returns Tune's ResultGrid. Ray must be initialised."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    sweep_dir = sweep_dir.resolve()
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, sweep_dir=str(sweep_dir)),
                                    {"cpu": spec["cpus_per_trial"], "gpu": spec["gpus_per_trial"]})
    experiment = sweep_dir / "tune"
    if resume and tune.Tuner.can_restore(str(experiment)):
        # Tune's own restore: finished trials stay finished, unfinished and failed ones continue (from last.pt)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        choose = tune.grid_search if spec["search"] == "grid" else tune.choice
        mode = "min" if spec["metric"].endswith("loss") else "max"
        max_epochs = max(trial_config(spec, v).epochs for v in combinations(spec["params"]))
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=spec["grace_period"])
                     if spec["scheduler"] == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            param_space={k: choose(v) for k, v in spec["params"].items()},
            tune_config=tune.TuneConfig(
                metric=spec["metric"], mode=mode, scheduler=scheduler, num_samples=spec["samples"],
                reuse_actors=True,  # a trial after another skips a worker start-up (importing torch: seconds)
                search_alg=BasicVariantGenerator(random_state=spec["search_seed"],
                                                 max_concurrent=spec["max_concurrent"])),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(sweep_dir), verbose=1,
                failure_config=tune.FailureConfig(max_failures=1),  # a dead trial restarts, from last.pt
                callbacks=[SweepTable(str(sweep_dir), spec)]))
    return tuner.fit()


def _sweep_table_class():
    from ray import tune

    class _SweepTable(tune.Callback):
        """Rewrites SWEEP_DIR/sweep.csv whenever a trial starts, ends or fails (runs in the driver)."""

        def __init__(self, sweep_dir: str, spec: dict[str, Any]):
            self.sweep_dir, self.spec = sweep_dir, spec

        def _write(self, trials):
            write_sweep_csv(Path(self.sweep_dir), self.spec, trials)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._write(trials)

        on_trial_complete = on_trial_error = on_trial_start

        def on_experiment_end(self, trials, **info):
            self._write(trials)

    return _SweepTable


def SweepTable(sweep_dir: str, spec: dict[str, Any]):  # noqa: N802 - builds the Tune callback lazily
    return _sweep_table_class()(sweep_dir, spec)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def make_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lib.scale.sweep", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("the sweep")
    s.add_argument("--param", action="append", metavar="NAME=V1,V2,...",
                   help="a lib.train setting and its values (repeatable; widths: W1,W2;W1,W2 per value)")
    s.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="grid: every combination; random: --samples draws from the value lists")
    s.add_argument("--samples", type=int, default=1, help="number of random draws (--search random)")
    s.add_argument("--search-seed", type=int, default=0, help="seed of the random draws")
    s.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                   help="fifo: every trial runs all epochs; asha: stop weak trials early")
    s.add_argument("--metric", choices=HISTORY_METRICS, default="val_acc",
                   help="what the scheduler compares (losses are minimised, accuracies maximised)")
    s.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs every trial runs")
    s.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves per trial")
    s.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (0.5: two per GPU)")
    s.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    s.add_argument("--address", default=None,
                   help="join a Ray cluster: auto (after `ray start --head`) or ray://HOST:PORT")
    s.add_argument("--out", required=True, metavar="SWEEP_DIR", help="the sweep's folder")
    s.add_argument("--resume", action="store_true", help="continue the sweep in SWEEP_DIR")
    t = p.add_argument_group("settings of every trial (as python -m lib.train)")
    add_config_arguments(t, skip=("out", "resume", "sync_bn"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    spec = build_spec(args)
    sweep_dir = Path(args.out)
    resuming = check_sweep_dir(sweep_dir, spec, args.resume)
    started = start_ray(args.address, args.num_cpus)
    try:
        if spec["profile"] == "smoke":
            from ..sources.synthetic import ensure_smoke_data
            ensure_smoke_data(spec["fixed"]["data_dir"])  # once here, not racing in parallel trials
        if not resuming:
            atomic_write_text(sweep_dir / "sweep.json", json.dumps(spec, indent=2) + "\n")
        results = run_sweep(spec, sweep_dir, resume=resuming)  # SweepTable writes sweep.csv as trials end
    finally:
        if started:
            import ray
            ray.shutdown()
    failed = sum(1 for r in results if r.error)
    print(f"sweep: {len(results)} trials ({failed} failed); {sweep_dir / 'sweep.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
