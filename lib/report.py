"""The report's Figure 1 and Table 1, rebuilt from run folders (config.json + history.csv).

    python -m lib.report --runs runs/r64 runs/lr18 --figures figures --report report

Figure 1 ("Training vs. Best Validation Accuracy per Epoch"): one run, as in the report -- green per-epoch
training accuracy, blue best-validation-accuracy-so-far. With several runs it shows the best real run
(``--figure-run`` picks another).

Table 1: one row per model of the report's Table 1 (all four, always), #Params/N/B/C from
``lib.models.model_summary``, the measured best and final-epoch validation accuracy next to the report's own
number, and a Source column saying which data, profile and epochs the measured numbers came from. Only a
*real* run -- CIFAR-10, the paper profile, the full training split, the full validation set, every configured
epoch done -- puts numbers in the measured columns; any other run is mentioned only in Source, marked
"NOT a reproduction" with the reasons, so it can never be read as one. A run on a copy of CIFAR-10 that is not
the official release (config.json's ``data_official``) is labelled as a copy wherever it appears.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch.nn as nn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: importing this module never changes a notebook's backend
from matplotlib.ticker import MaxNLocator

from .common import ArgumentParser, UserError, atomic_path, run_cli
from .config import RunConfig, load_config
from .models import REPORTED, build_model, model_summary

HISTORY_COLUMNS = ("epoch", "train_acc", "val_acc", "best_val_acc")
# Settings that change regularisation, not the architecture: a run with dropout 0.2 is still its Table-1 model.
REGULARISATION_KEYS = ("dropout", "stochastic_depth_rate")
TABLE_COLUMNS = ["Model", "#Params (M)", "N", "B", "C", "Best Val Acc (%)", "Final Val Acc (%)",
                 "Reported Val Acc (%)", "Source"]
FIGURE_TITLE = "Training vs. Best Validation Accuracy per Epoch"
NOT_A_REPRODUCTION = "NOT a reproduction"
TABLE_START, TABLE_END = "<!-- table1:start -->", "<!-- table1:end -->"  # report.md's generated part


@dataclass
class Run:
    """One run folder: its RunConfig, the extra recorded fields (model_config, data_source, ...), its history."""

    path: Path
    config: RunConfig
    extra: dict
    history: pd.DataFrame

    @property
    def model_config(self) -> dict:
        return self.extra["model_config"]

    @property
    def data_source(self) -> str:
        return self.extra.get("data_source", "unknown")

    @property
    def epochs_done(self) -> int:
        return int(self.history["epoch"].max())

    @property
    def best_val_acc(self) -> float:
        """Highest validation accuracy in history.csv (a fraction; no TTA -- the training loop's number)."""
        return float(self.history["val_acc"].max())

    @property
    def final_val_acc(self) -> float:
        """The last recorded epoch's validation accuracy (not chosen on the validation set, unlike the best)."""
        return float(self.history.sort_values("epoch")["val_acc"].iloc[-1])

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.config.epochs

    @property
    def data_label(self) -> str:
        """The data in the report's words; a copy that is not the official release says so."""
        if self.data_source == "synthetic":
            return "synthetic smoke data"
        if self.data_source != "cifar10":
            return self.data_source
        # data_official: lib.train records whether the files are the official release (its known checksums)
        return {True: "CIFAR-10", False: "CIFAR-10 re-encoded copy, not the official release"}.get(
            self.extra.get("data_official"), "CIFAR-10, release not recorded")

    def shortfalls(self) -> list[str]:
        """Why this run's numbers may not stand in Table 1's measured columns (empty: they may)."""
        cfg, why = self.config, []
        if self.data_source != "cifar10":
            why.append(self.data_label)
        if cfg.profile != "paper":
            why.append(f"{cfg.profile} profile")
        if cfg.train_size is not None:
            why.append("training subset")
        if cfg.val_size is not None:
            why.append("validation subset")
        if not self.finished:
            why.append(f"unfinished, {self.epochs_done} of {cfg.epochs} epochs")
        return why

    @property
    def is_real(self) -> bool:
        """CIFAR-10, the paper profile, full training split and validation set, finished: a Table 1 result."""
        return not self.shortfalls()

    def source(self, result: bool = True) -> str:
        """Which data, profile and epochs this run's numbers come from, in one line.

        ``result``: for a run that is not real, append its numbers, "NOT a reproduction" and the reasons.
        """
        cfg, extra = self.config, self.extra
        val = ("official test batch" if cfg.val_source == "test"
               else f"{cfg.holdout_fraction:.0%} hold-out")
        sizes = f"val = {val}, {extra['n_val']} images" if "n_val" in extra else f"val = {val}"
        if cfg.train_size is not None:
            sizes += f"; train subset {extra.get('n_train', cfg.train_size)} images"
        epochs = (f"{self.epochs_done} epochs" if self.epochs_done >= cfg.epochs
                  else f"{self.epochs_done} of {cfg.epochs} epochs")
        knobs = "".join(f", {k.replace('_', ' ')} {getattr(cfg, k)}" for k in REGULARISATION_KEYS
                        if getattr(cfg, k) is not None)
        text = f"{self.data_label} ({sizes}), {cfg.profile} profile, {epochs}{knobs}"
        if result and not self.is_real:
            text += (f": best val {100 * self.best_val_acc:.2f}%, final {100 * self.final_val_acc:.2f}% — "
                     f"{NOT_A_REPRODUCTION} ({'; '.join(self.shortfalls())})")
        return f"{text} [{self.path.name}]"


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by ``lib.train``; a missing or corrupt file is a UserError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    cfg, extra = load_config(run_dir / "config.json")
    if not isinstance(extra.get("model_config"), dict):
        raise UserError(f"{run_dir / 'config.json'}: no model_config (not a run folder written by lib.train)")
    hist_path = run_dir / "history.csv"
    if not hist_path.is_file():
        raise UserError(f"{hist_path}: no such file (has the run finished an epoch?)")
    try:
        history = pd.read_csv(hist_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{hist_path}: not a readable history CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise UserError(f"{hist_path}: missing column(s) {', '.join(missing)}")
    if history.empty:
        raise UserError(f"{hist_path}: no epochs recorded yet")
    return Run(run_dir, cfg, extra, history)


# ---------------------------------------------------------------------------------------------- Figure 1
def pick_figure_run(runs: list[Run]) -> Run:
    """The run Figure 1 shows: the best real run, else (smoke/synthetic only) the best of what there is."""
    if not runs:
        raise UserError("no runs given")
    real = [r for r in runs if r.is_real]
    return max(real or runs, key=lambda r: r.best_val_acc)


def plot_figure1(run: Run) -> Figure:
    """The report's Figure 1 for one run (a matplotlib Figure; notebooks display it, ``save_figure`` writes it)."""
    h = run.history
    label = REPORTED.get(run.config.model, {}).get("label", run.config.model)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(h["epoch"], 100 * h["train_acc"], color="green", label="Training accuracy")
    ax.plot(h["epoch"], 100 * h["best_val_acc"], color="blue",
            label=f"Best validation accuracy so far (max {100 * run.best_val_acc:.2f}%)")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Accuracy (%)")
    fig.suptitle(FIGURE_TITLE, fontweight="bold")
    if run.is_real:
        ax.set_title(f"{label}: {run.source()}", fontsize=7, wrap=True)
    else:  # said on the figure itself, so a smoke plot cannot pass for the report's Figure 1
        ax.set_title(f"{NOT_A_REPRODUCTION} ({'; '.join(run.shortfalls())}) — {label}: {run.source(result=False)}",
                     fontsize=7, color="red", wrap=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, figures_dir: str | os.PathLike, stem: str = "figure1") -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(figures_dir) / f"{stem}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------- Table 1
def _architecture(model_config: dict) -> dict:
    """The parts of a model config that define the architecture (JSON-normalised, so lists compare equal)."""
    return {k: v for k, v in json.loads(json.dumps(model_config)).items() if k not in REGULARISATION_KEYS}


def _row(label: str, model: nn.Module, runs: list[Run], reported: str) -> dict:
    s = model_summary(model)  # the architecture columns, as notebook 02 shows them
    real = [r for r in runs if r.is_real]
    if real:
        best = max(real, key=lambda r: r.best_val_acc)
        val, final, source = f"{100 * best.best_val_acc:.2f}", f"{100 * best.final_val_acc:.2f}", best.source()
    elif runs:  # no real run: the numbers go to Source with the caveat, never to the measured columns
        val = final = "no real run yet"
        source = max(runs, key=lambda r: r.best_val_acc).source()
    else:
        val, final, source = "no run yet", "no run yet", "—"
    return {"Model": label, "#Params (M)": f"{s['parameters'] / 1e6:.2f}", "N": str(s["N"]),
            "B": f"{s['B']} (per group)", "C": s["C"], "Best Val Acc (%)": val, "Final Val Acc (%)": final,
            "Reported Val Acc (%)": reported, "Source": source}


def table1(runs: list[Run]) -> pd.DataFrame:
    """Table 1: the report's four models (always), then any run whose architecture differs from all four."""
    rows, claimed = [], set()
    for name, rep in REPORTED.items():
        model = build_model(name)
        arch = _architecture(model.config)
        mine = [r for r in runs if r.config.model == name and _architecture(r.model_config) == arch]
        claimed.update(id(r) for r in mine)
        rows.append(_row(rep["label"], model, mine, f"{rep['val_acc']:.2f}"))
    # custom architectures (e.g. a tuned base width): their own rows, grouped by architecture
    custom: dict[str, list[Run]] = {}
    for r in runs:
        if id(r) not in claimed:
            custom.setdefault(json.dumps(_architecture(r.model_config), sort_keys=True), []).append(r)
    for group in custom.values():
        cfg = group[0].model_config
        name = cfg.get("name", group[0].config.model)
        default = _architecture(build_model(name).config) if name in REPORTED else {}
        diff = ", ".join(f"{k} {v}" for k, v in _architecture(cfg).items() if default.get(k) != v and k != "name")
        label = f"{REPORTED.get(name, {}).get('label', name)} (custom: {diff})"
        rows.append(_row(label, build_model(**cfg), group, "— (not in the report)"))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


TABLE_NOTE = ("Best / Final Val Acc (%): the highest and the last epoch's validation accuracy in the run's "
              "history.csv (no TTA), only from finished runs on CIFAR-10 with the paper profile, the full "
              "training split and the full validation set; Source gives the data, profile and epochs, and names "
              "any other run with the reasons it does not count. With the official test batch as validation set "
              "(as in the report) the best epoch is picked on the test set, so the best number is optimistic; "
              "--val-source holdout validates on a hold-out of the training batches and keeps the test set clean. "
              "Reported Val Acc (%): the report's own Table 1, as reported (not measured here). "
              "#Params, N (groups), B (blocks per group) and C (channels) are computed from lib.models.")


def _latex_escape(text: str) -> str:
    """LaTeX's special characters in plain text (Styler escapes the cells, not the caption)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    # "--" would print as an en dash: keep option names such as --val-source as typed
    return "".join(special.get(ch, ch) for ch in text).replace("--", "-{}-")


def write_table1(table: pd.DataFrame, report_dir: str | os.PathLike, update_write_up: bool = True) -> list[Path]:
    """``table1.md`` (pandas to_markdown) and ``table1.tex`` (pandas Styler.to_latex), written atomically.

    With ``update_write_up``, the table inside ``report_dir/report.md`` (between its markers) is refreshed too.
    """
    report_dir = Path(report_dir)
    # disable_numparse: keep "5.00" as printed (tabulate would turn it into "5")
    md = (f"Table 1: List of Model Configurations Experimented.\n\n"
          f"{table.to_markdown(index=False, disable_numparse=True)}\n\n{TABLE_NOTE}\n")
    tex = (table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
           .to_latex(caption="List of Model Configurations Experimented. " + _latex_escape(TABLE_NOTE),
                     label="tab:table1", hrules=True, column_format="l" * 5 + "r" * 3 + "p{6cm}"))
    paths = []
    for name, text in (("table1.md", md), ("table1.tex", tex)):
        with atomic_path(report_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(report_dir / name)
    write_up = report_dir / "report.md"
    if update_write_up and write_up.exists() and TABLE_START in (old := write_up.read_text(encoding="utf-8")):
        # report.md shows the generated table verbatim between its markers, never a hand-typed copy
        new = re.sub(f"({re.escape(TABLE_START)}\n).*?(\n{re.escape(TABLE_END)})",
                     lambda m: m.group(1) + md.strip() + m.group(2), old, flags=re.S)
        if new != old:
            with atomic_path(write_up) as tmp:
                tmp.write_text(new, encoding="utf-8")
            paths.append(write_up)
    return paths


def archive_metrics(runs: list[Run], report_dir: str | os.PathLike) -> list[Path]:
    """Copy config.json + history.csv of every run on real data into ``report_dir/runs/<run name>/``.

    Run folders (and their checkpoints) are not committed; these small files are, so each number in the
    table and the write-up can be traced to the run that produced it. Synthetic (smoke) runs are skipped.
    """
    paths = []
    for run in runs:
        if run.data_source == "synthetic":
            continue
        dest = Path(report_dir) / "runs" / run.path.resolve().name
        if dest.resolve() == run.path.resolve():
            continue
        for name in ("config.json", "history.csv"):
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run.path / name, tmp)
            paths.append(dest / name)
    return paths


def make_report(run_dirs: list[str | os.PathLike], figures_dir: str | os.PathLike = "figures",
                report_dir: str | os.PathLike = "report", figure_run: str | os.PathLike | None = None) -> dict:
    """Figure 1 and Table 1 from run folders. Returns the table and the written paths."""
    runs = [load_run(d) for d in run_dirs]
    shown = load_run(figure_run) if figure_run is not None else pick_figure_run(runs)
    table = table1(runs)
    figures = save_figure(plot_figure1(shown), figures_dir)
    # the write-up only ever shows tables built from real-data runs (a smoke run's table stays in table1.*)
    tables = write_table1(table, report_dir, update_write_up=all(r.data_source != "synthetic" for r in runs))
    metrics = archive_metrics(runs, report_dir)
    return {"table": table, "figure_run": shown.path, "paths": figures + tables + metrics}


# ------------------------------------------------------------------- The hyper-parameter study (lib.sweep)
SWEEP_TITLE = "Hyper-parameter study: best validation accuracy"


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """A sweep written by ``lib.sweep``: its settings (sweep.json) and one row per trial of sweep.csv, with the
    swept values read back from each trial's config.json and the accuracies from its history.csv."""
    sweep_dir = Path(sweep_dir)
    spec_path, csv_path = sweep_dir / "sweep.json", sweep_dir / "sweep.csv"
    for path in (spec_path, csv_path):
        if not path.is_file():
            raise UserError(f"{path}: no such file (is {sweep_dir} a folder written by lib.sweep?)")
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
    p = ArgumentParser(prog="python -m lib.report",
                       description="Figure 1 (figures/figure1.png, .pdf) and Table 1 (report/table1.md, .tex) "
                                   "from run folders.")
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="run folders written by lib.train")
    p.add_argument("--sweep", metavar="SWEEP_DIR",
                   help="instead: the hyper-parameter study of a lib.sweep folder (figures/sweep_<name>.png)")
    p.add_argument("--figures", default="figures", help="folder for figure1.png / figure1.pdf")
    p.add_argument("--report", default="report", help="folder for table1.md / table1.tex")
    p.add_argument("--figure-run", metavar="RUN_DIR", help="run shown in Figure 1 (default: the best real run)")
    args = p.parse_args(argv)
    if args.sweep:
        result = make_sweep_report(args.sweep, args.figures, args.report)
        print(result["table"].to_markdown(index=False, disable_numparse=True))
        print("wrote " + ", ".join(str(p) for p in result["paths"]))
        return 0
    if not args.runs:
        p.error("give --runs RUN_DIR ... (or --sweep SWEEP_DIR)")
    result = make_report(args.runs, args.figures, args.report, args.figure_run)
    print(result["table"].to_markdown(index=False, disable_numparse=True))
    print(f"Figure 1 shows {result['figure_run']}")
    print("wrote " + ", ".join(str(p) for p in result["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
