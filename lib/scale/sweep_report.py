"""A hyper-parameter study's figure and table, from a folder written by ``lib.scale.sweep``:

    python -m lib.scale.sweep_report runs/sweep_dropout --figures figures --report report

figures/sweep_<name>.png/.pdf (best validation accuracy per setting) and report/sweep_<name>.md (one row per trial),
as Figure 1 and Table 1 are made from run folders (lib.report).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..common import ArgumentParser, UserError, atomic_path, run_cli
from ..report import save_figure
from ..runs import NOT_A_REPRODUCTION, Run, load_run

SWEEP_TITLE = "Hyper-parameter study: best validation accuracy"


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """A sweep written by ``lib.scale.sweep``: its settings (sweep.json) and one row per trial of sweep.csv, with the
    swept values read back from each trial's config.json and the accuracies from its history.csv."""
    sweep_dir = Path(sweep_dir)
    spec_path, csv_path = sweep_dir / "sweep.json", sweep_dir / "sweep.csv"
    for path in (spec_path, csv_path):
        if not path.is_file():
            raise UserError(f"{path}: no such file (is {sweep_dir} a folder written by lib.scale.sweep?)")
    try:
        spec = json.loads(spec_path.read_text())
        listed = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (json.JSONDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise UserError(f"{sweep_dir}: unreadable sweep.json or sweep.csv ({' '.join(str(exc).split())})") from None
    rows = []
    for trial in listed.to_dict("records"):
        run_dir = sweep_dir / trial["run_dir"]
        row = {"trial": int(trial["trial"]), "status": trial["status"], "run_dir": trial["run_dir"]}
        if (run_dir / "history.csv").is_file():  # a pending trial has no run folder yet
            run = load_run(run_dir)
            values = {p: getattr(run.config, p) for p in spec["params"]}
            row.update(values, epochs_done=run.epochs_done, epochs=run.config.epochs,
                       best_val_acc=run.best_val_acc, final_val_acc=float(run.history["val_acc"].iloc[-1]),
                       is_real=run.is_real, data=_data_words(run))
        else:
            row.update({p: trial[p] for p in spec["params"]}, epochs_done=0, epochs=None, best_val_acc=None,
                       final_val_acc=None, is_real=False, data="")
        rows.append(row)
    trials = pd.DataFrame(rows)
    for p in spec["params"]:  # lists (widths) as text, so they group and label like any other value
        trials[p] = trials[p].map(lambda v: ",".join(map(str, v)) if isinstance(v, list) else v)
    return spec, trials


def plot_sweep(spec: dict, trials: pd.DataFrame) -> Figure:
    """Best validation accuracy against each swept parameter: one panel per parameter, one line per value of
    another swept parameter (averaged over any further ones). Failed and pending trials are left out."""
    done = trials[(trials["epochs_done"] > 0) & (trials["status"] != "failed")]
    if done.empty:
        raise UserError("the sweep has no trial with a finished epoch yet")
    params = [p for p in spec["params"] if done[p].nunique() > 1] or list(spec["params"])[:1]
    fig = Figure(figsize=(max(6.0, 4.2 * len(params)), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params):
        xs = sorted(done[p].unique(), key=_sort_key)
        other = next((q for q in params if q != p), None)
        groups = [(None, done)] if other is None else [(v, done[done[other] == v])
                                                      for v in sorted(done[other].unique(), key=_sort_key)]
        for value, group in groups:
            acc = group.groupby(p)["best_val_acc"].mean()
            pos = [i for i, x in enumerate(xs) if x in acc.index]
            ax.plot(pos, [100 * acc[xs[i]] for i in pos], marker="o",
                    label=None if other is None else f"{other} = {value}")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(p)
        ax.set_ylabel("Best validation accuracy (%)")
        ax.grid(alpha=0.3)
        if other is not None:
            ax.legend(fontsize=7)
    fig.suptitle(SWEEP_TITLE, fontweight="bold")
    stopped = int((done["status"] == "stopped early").sum())
    note = f"{len(done)} trials" + (f" ({stopped} stopped early by the scheduler)" if stopped else "")
    if other_params := [p for p in spec["params"] if p not in params[:2]]:
        note += f"; averaged over {', '.join(other_params)}"
    if done["is_real"].all():
        fig.text(0.5, 0.005, note, ha="center", fontsize=7)
    else:  # as Figure 1: a smoke sweep says so on the figure itself
        fig.text(0.5, 0.005, f"{NOT_A_REPRODUCTION} — {note}; {'; '.join(sorted(set(done['data'])))}",
                 ha="center", fontsize=6, color="red", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _data_words(run: Run) -> str:
    data = {"cifar10": "CIFAR-10", "synthetic": "synthetic smoke data"}.get(run.data_source, run.data_source)
    n_train = run.extra.get("n_train")
    return f"{data}, {run.config.profile} profile" + (f", {n_train} training images" if n_train else "")


def _sort_key(value):
    """Numbers in numeric order, anything else (text, lists as text) after them in text order."""
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def sweep_table(spec: dict, trials: pd.DataFrame) -> pd.DataFrame:
    """The table of trials, best first: values, status, epochs, best and final val acc (%), run folder."""
    table = trials.sort_values("best_val_acc", ascending=False, na_position="last")
    pct = lambda v: "" if pd.isna(v) else f"{100 * v:.2f}"  # noqa: E731
    return pd.DataFrame({"Trial": table["trial"], **{p: table[p] for p in spec["params"]},
                         "Status": table["status"],
                         "Epochs": [f"{int(d)}/{int(e)}" if pd.notna(e) else ""
                                    for d, e in zip(table["epochs_done"], table["epochs"])],
                         "Best val acc (%)": table["best_val_acc"].map(pct),
                         "Final val acc (%)": table["final_val_acc"].map(pct), "Run": table["run_dir"]})


def make_sweep_report(sweep_dir: str | os.PathLike, figures_dir: str | os.PathLike = "figures",
                      report_dir: str | os.PathLike = "report", name: str | None = None) -> dict:
    """figures/sweep_<name>.png/.pdf and report/sweep_<name>.md from a sweep folder (name: the folder's, less
    a leading ``sweep_``)."""
    spec, trials = load_sweep(sweep_dir)
    name = name or Path(sweep_dir).resolve().name.removeprefix("sweep_")  # runs/sweep_x -> figures/sweep_x.png
    table = sweep_table(spec, trials)
    paths = save_figure(plot_sweep(spec, trials), figures_dir, f"sweep_{name}")
    table_path = Path(report_dir) / f"sweep_{name}.md"
    with atomic_path(table_path) as tmp:
        tmp.write_text(table.to_markdown(index=False, disable_numparse=True) + "\n")
    return {"table": table, "paths": [*paths, table_path]}




def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lib.scale.sweep_report", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a folder written by python -m lib.scale.sweep")
    p.add_argument("--figures", default="figures", help="folder for sweep_<name>.png / .pdf")
    p.add_argument("--report", default="report", help="folder for sweep_<name>.md")
    args = p.parse_args(argv)
    result = make_sweep_report(args.sweep_dir, args.figures, args.report)
    print(result["table"].to_markdown(index=False, disable_numparse=True))
    print("wrote " + ", ".join(str(p) for p in result["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
