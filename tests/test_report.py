"""Report: Figure 1 and Table 1 from run folders (lib.report); only a reproduction of the paper profile counts as one
(lib.runs)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lib.common import UserError, run_cli
from lib.config import make_config, save_config
from lib.models import build_model, count_parameters
from lib.report import (FIGURE_TITLE, NOT_A_REPRODUCTION, TABLE_COLUMNS, log_comparison, main, pick_figure_run,
                        plot_figure1, source_line, table1, write_table1)
from lib.colab.runs import default_runs
from lib.runs import load_run
from lib.train import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smoke_run(smoke_root, tmp_path_factory):
    """A tiny real training run (2 epochs, smoke profile, synthetic data, light_resnet18 at base width 8)."""
    out = tmp_path_factory.mktemp("report") / "smoke_lr18_b8"
    train(make_config("smoke", model="light_resnet18", base_channels=8, data_dir=str(smoke_root), out=str(out),
                      train_size=100, val_size=50, batch_size=25, epochs=2, progress=False, device="cpu",
                      num_workers=0))
    return out


def fake_run(run_dir: Path, model: str, val_accs, profile="paper", data_source="cifar10", epochs=None,
             data_official=True, amp_dtype="bfloat16", device_name="NVIDIA H200", written=None, extra=None,
             **overrides) -> Path:
    """A run folder as lib.train writes it (config.json + history.csv), without training: the table's policy
    is about where a number came from, and real CIFAR-10 runs cannot happen in a test.
    ``epochs``: the configured schedule (default: as many as ``val_accs``, a finished run).
    ``data_official=None`` leaves the field out (a config.json that does not record it); ``written``: history.csv's
    modification time (seconds), which decides the newest run of a model."""
    cfg = make_config(profile, model=model, out=str(run_dir), epochs=epochs or len(val_accs), **overrides)
    n_train = cfg.train_size or 50000
    built = build_model(model, **cfg.model_overrides())
    info = {"model_config": built.config, "parameters": count_parameters(built), "data_source": data_source,
            "data_description": f"{data_source} data", "n_train": n_train, "n_val": cfg.val_size or 10000,
            "amp_dtype": amp_dtype, "device_name": device_name, "world_size": 1, **(extra or {})}
    if data_official is not None:
        info["data_official"] = data_official and data_source == "cifar10"
    save_config(cfg, run_dir / "config.json", extra=info)
    val = pd.Series(val_accs, dtype=float)
    history = pd.DataFrame({"epoch": range(1, len(val) + 1), "lr": 0.1, "train_loss": 1.0,
                            "train_acc": (val + 0.05).clip(upper=1.0), "train_acc_dominant": val, "val_loss": 1.0,
                            "val_acc": val, "best_val_acc": val.cummax(), "epoch_seconds": 1.0})
    history.to_csv(run_dir / "history.csv", index=False)
    if written is not None:
        os.utime(run_dir / "history.csv", (written, written))
    return run_dir


def row(table: pd.DataFrame, label: str) -> pd.Series:
    match = table[table["Model"] == label]
    assert len(match) == 1, f"one row labelled {label!r}"
    return match.iloc[0]


FULL = [0.5] * 299  # the first 299 epochs of a finished 300-epoch run; tests append the last


# ---------------------------------------------------------------------------------------------------- Table 1
# The original report's Table 1: #Params (M), N, B, C and Val Acc (%) as printed; then the best epoch of each
# original log as the notebooks print it (LightResNet18's on its 5,000-image hold-out; base=45's log is lost).
REPORT_TABLE1 = {"LightResNet18": (2.81, "4", "2 (per group)", "32, 64, 128, 256", "93.12", "95.12 (hold-out)"),
                 "LightResNet18_v2 (base=40)": (4.39, "4", "2 (per group)", "40, 80, 160, 320", "94.35", "96.11"),
                 "LightResNet18_v2 (base=45)": (5.00, "4", "2 (per group)", "45, 90, 170, 340", "94.88", "—"),
                 "RobustResNet64": (3.80, "3", "10 (per group)", "32, 64, 128", "96.93", "96.93")}


def test_table_lists_the_four_models_with_the_reports_columns_and_the_logs_best():
    t = table1([])
    assert list(t.columns) == TABLE_COLUMNS
    assert TABLE_COLUMNS.index("Original log best (%)") == TABLE_COLUMNS.index("Reported Val Acc (%)") + 1
    assert list(t["Model"]) == list(REPORT_TABLE1)
    for label, (params_m, n, b, c, val_acc, logged) in REPORT_TABLE1.items():
        r = row(t, label)
        # our count of the built model; the report rounds differently for LightResNet18 (2.80 vs 2.81)
        assert abs(float(r["#Params (M)"]) - params_m) <= 0.011, label
        assert [r["N"], r["B"], r["C"], r["Reported Val Acc (%)"], r["Original log best (%)"]] == [
            n, b, c, val_acc, logged], label
        assert r["Best Val Acc (%)"] == r["Final Val Acc (%)"] == "no run yet"


def test_smoke_and_synthetic_numbers_never_fill_the_val_acc_column(tmp_path):
    runs = [load_run(fake_run(tmp_path / "smoke_r64", "robust_resnet64", [0.2, 0.42], profile="smoke",
                              data_source="synthetic", amp_dtype=None, device_name="cpu (x86_64, 2 threads)")),
            # the paper recipe on synthetic data, and the paper recipe on a CIFAR-10 subset: not reproductions
            load_run(fake_run(tmp_path / "synthetic_paper", "light_resnet18_v2", [0.3, 0.55],
                              data_source="synthetic")),
            load_run(fake_run(tmp_path / "subset_paper", "light_resnet18_v2_b45", [0.31, 0.5], train_size=500))]
    t = table1(runs)
    for label, pct in [("RobustResNet64", "42.00"), ("LightResNet18_v2 (base=40)", "55.00"),
                       ("LightResNet18_v2 (base=45)", "50.00")]:
        r = row(t, label)
        assert r["Best Val Acc (%)"] == r["Final Val Acc (%)"] == "no real run yet"
        assert f"best val {pct}%, final {pct}%" in r["Source"] and NOT_A_REPRODUCTION in r["Source"]
    r64 = row(t, "RobustResNet64")["Source"]
    assert r64.startswith("synthetic smoke data (val = official test batch, 160 images; train subset 320 "
                          "images), smoke profile, CPU, fp32: best val 42.00%")
    # every way the smoke profile differs from the paper one is named (its settings, printed by make_config)
    smoke, paper = make_config("smoke"), make_config("paper")
    assert "(synthetic smoke data; smoke profile; 2 of 300 epochs (2-epoch schedule); " in r64
    for name in ("train_size", "val_size", "batch_size"):
        assert f"{name} {getattr(smoke, name)}" in r64 and getattr(smoke, name) != getattr(paper, name)
    assert "data_dir" not in r64 and "out " not in r64, "where the files are is not part of the recipe"
    assert "train subset 500 images" in row(t, "LightResNet18_v2 (base=45)")["Source"]
    assert row(t, "LightResNet18")["Best Val Acc (%)"] == "no run yet"
    for column in ("Best Val Acc (%)", "Final Val Acc (%)"):
        assert not any(v.replace(".", "").isdigit() for v in t[column]), "no number in the measured columns"


def test_a_reproduction_is_the_paper_profile_at_its_full_schedule(tmp_path):
    """A finished 5-epoch run and a 300-epoch run with dropout 0.2 are not reproductions; Source says why."""
    five = load_run(fake_run(tmp_path / "r64_5ep", "robust_resnet64", [0.4, 0.5, 0.6, 0.7, 0.75]))
    drop = load_run(fake_run(tmp_path / "r64_drop", "robust_resnet64", FULL + [0.9], dropout=0.2))
    both = load_run(fake_run(tmp_path / "r64_5ep_drop", "robust_resnet64", [0.5] * 5, dropout=0.2))
    stopped = load_run(fake_run(tmp_path / "r64_3of300", "robust_resnet64", [0.4, 0.5, 0.6], epochs=300))
    assert five.finished and not five.is_real
    assert five.shortfalls() == ["5 of 300 epochs (5-epoch schedule)"]
    assert drop.shortfalls() == ["dropout 0.2"] and not drop.is_real
    assert both.shortfalls() == ["5 of 300 epochs (5-epoch schedule)", "dropout 0.2"]
    assert stopped.shortfalls() == ["3 of 300 epochs"]  # the first 3 epochs of the 300-epoch schedule
    assert source_line(drop) == ("CIFAR-10 (val = official test batch, 10000 images), paper profile, NVIDIA H200, "
                             "bf16 AMP: best val 90.00%, final 90.00% — NOT a reproduction (dropout 0.2) [r64_drop]")
    assert source_line(both).endswith("NOT a reproduction (5 of 300 epochs (5-epoch schedule); dropout 0.2) "
                                  "[r64_5ep_drop]")
    t = table1([drop])
    assert row(t, "RobustResNet64")["Best Val Acc (%)"] == "no real run yet", "dropout 0.2: not the report's run"

    real = load_run(fake_run(tmp_path / "r64", "robust_resnet64", FULL + [0.9693], amp_dtype=None))
    assert real.is_real and real.shortfalls() == []
    assert source_line(real) == ("CIFAR-10 (val = official test batch, 10000 images), paper profile, NVIDIA H200, "
                             "fp32, 300 epochs [r64]")
    r = row(table1([real]), "RobustResNet64")
    assert (r["Best Val Acc (%)"], r["Final Val Acc (%)"]) == ("96.93", "96.93")


def test_what_does_and_does_not_count_as_a_change(tmp_path):
    # the model's own default given explicitly, where the files are, how it runs, the seed: still a reproduction
    same = load_run(fake_run(tmp_path / "same", "robust_resnet64", FULL + [0.9], dropout=0.1, seed=7,
                             loader="torchvision", num_workers=2, device="cuda", compile=True, progress=False,
                             data_dir="elsewhere", download=True, amp=False, amp_dtype="float16"))
    assert same.shortfalls() == [] and "fp16 AMP" in source_line(same)
    # anything that changes what is computed counts, each named as the option a user would set
    changed = load_run(fake_run(tmp_path / "changed", "light_resnet18_v2", FULL + [0.9], label_smoothing=0.0,
                                weight_decay=1e-4, val_source="holdout", stochastic_depth_rate=0.2))
    assert changed.shortfalls() == ["stochastic_depth_rate 0.2", "val_source holdout", "weight_decay 0.0001",
                                    "label_smoothing 0"]
    # several processes: batch norm over each process's share of the batch unless sync_bn
    ddp = load_run(fake_run(tmp_path / "ddp", "robust_resnet64", FULL + [0.9], extra={"world_size": 4}))
    assert ddp.shortfalls() == ["batch norm per process (4 processes without sync_bn)"]
    assert load_run(fake_run(tmp_path / "ddp_sync", "robust_resnet64", FULL + [0.9], sync_bn=True,
                             extra={"world_size": 4})).is_real
    # a folder written before a setting existed: what it did there is unknown, so it cannot count
    # (its model_config lacks the options added since: those had their earlier behaviour, lib.models.LEGACY_OPTIONS)
    def older(run_dir):
        config = json.loads((run_dir / "config.json").read_text())
        del config["momentum"], config["amp_dtype"], config["device_name"]
        for option in ("se_position", "stochastic_depth_mode", "init"):
            del config["model_config"][option]
        (run_dir / "config.json").write_text(json.dumps(config))
        return load_run(run_dir)

    old_r64 = older(fake_run(tmp_path / "old_r64", "robust_resnet64", FULL + [0.9]))
    # RobustResNet64 has neither SE nor stochastic depth: only the initialisation differed
    assert old_r64.shortfalls() == ["init default", "not recorded: momentum"]
    assert ", paper profile, device not recorded, precision not recorded:" in source_line(old_r64)
    old_v2 = older(fake_run(tmp_path / "old_v2", "light_resnet18_v2", FULL + [0.9]))
    assert old_v2.shortfalls() == ["se_position output", "stochastic_depth_mode row", "init default",
                                   "not recorded: momentum"]
    # SE placement on a model without SE computes nothing: not a change
    assert load_run(fake_run(tmp_path / "r64_se_out", "robust_resnet64", FULL + [0.9], se_position="output",
                             stochastic_depth_mode="row")).is_real


def test_every_model_at_the_paper_profile_is_a_reproduction(tmp_path):
    """The comparison is against make_config("paper", model=...) itself, whatever recipe that gives a model."""
    for model in ("light_resnet18", "light_resnet18_v2", "light_resnet18_v2_b45", "robust_resnet64"):
        run = load_run(fake_run(tmp_path / model, model, FULL + [0.9]))
        assert run.shortfalls() == [], model


def test_newest_run_of_a_model_is_shown_never_the_best(tmp_path):
    older_better = load_run(fake_run(tmp_path / "lr18_a", "light_resnet18", [0.80, 0.95, 0.94], written=1000))
    newer = load_run(fake_run(tmp_path / "lr18_b", "light_resnet18", [0.80, 0.9012, 0.89], written=2000))
    lr18 = row(table1([older_better, newer]), "LightResNet18")
    # both are finished 3-epoch runs, so neither is a reproduction: the newer one is named, with its numbers
    assert lr18["Best Val Acc (%)"] == "no real run yet"
    assert lr18["Source"].endswith("best val 90.12%, final 89.00% — NOT a reproduction (3 of 300 epochs "
                                   "(3-epoch schedule)) [lr18_b] (newest of 2 runs given)")
    # a reproduction is shown before any newer experiment, and its best and final epoch both stand
    real = load_run(fake_run(tmp_path / "lr18_real", "light_resnet18", FULL + [0.89], written=500))
    lr18 = row(table1([older_better, newer, real]), "LightResNet18")
    assert (lr18["Best Val Acc (%)"], lr18["Final Val Acc (%)"]) == ("89.00", "89.00")
    assert lr18["Source"].endswith("300 epochs [lr18_real] (newest of 3 runs given)")


def test_default_runs_take_the_newest_paper_run_per_model(tmp_path):
    runs_dir = tmp_path / "runs"
    fake_run(runs_dir / "r64_old", "robust_resnet64", [0.6, 0.99], written=1000)
    fake_run(runs_dir / "r64_new", "robust_resnet64", [0.5, 0.6], written=3000)
    fake_run(runs_dir / "lr18", "light_resnet18", [0.5], written=2000)
    fake_run(runs_dir / "lr18_smoke", "light_resnet18", [0.7], profile="smoke", data_source="synthetic",
             written=4000)
    (runs_dir / "started").mkdir()  # a run that has not finished an epoch: no history.csv yet
    assert [p.name for p in default_runs(runs_dir)] == ["lr18", "r64_new"]  # Table 1's order
    assert [p.name for p in default_runs(runs_dir, profile="smoke")] == ["lr18_smoke"]
    assert default_runs(tmp_path / "absent") == []


def test_holdout_runs_and_copies_are_labelled(tmp_path):
    """A copy that is not the official release is named so; a hold-out run trains on 45,000 images: a change."""
    holdout = load_run(fake_run(tmp_path / "r64_holdout", "robust_resnet64", FULL + [0.93], val_source="holdout"))
    copy = load_run(fake_run(tmp_path / "lr18_copy", "light_resnet18", FULL + [0.85], data_official=False))
    unknown = load_run(fake_run(tmp_path / "lr18_unknown", "light_resnet18", FULL + [0.84], data_official=None))
    assert holdout.shortfalls() == ["val_source holdout"]
    assert copy.is_real and unknown.is_real
    t = table1([holdout, copy])
    assert row(t, "RobustResNet64")["Source"].startswith("CIFAR-10 (val = 10% hold-out, 10000 images)")
    lr18 = row(t, "LightResNet18")
    assert lr18["Best Val Acc (%)"] == "85.00"
    assert lr18["Source"].startswith("CIFAR-10 re-encoded copy, not the official release (val = ")
    assert row(table1([unknown]), "LightResNet18")["Source"].startswith("CIFAR-10, release not recorded (val = ")
    assert "re-encoded copy, not the official release" in plot_figure1(copy).axes[0].get_title()


def test_custom_architecture_gets_its_own_row(smoke_run, tmp_path):
    """A base-width-8 run is not LightResNet18: its own row, #Params from its own config."""
    run = load_run(smoke_run)
    t = table1([run])
    assert len(t) == 5 and row(t, "LightResNet18")["Best Val Acc (%)"] == "no run yet"
    custom = t.iloc[4]
    assert custom["Model"] == "LightResNet18 (custom: widths [8, 16, 32, 64])"
    assert custom["#Params (M)"] == "0.18"  # a quarter of LightResNet18's widths, ~1/16 of its weights
    assert custom["C"] == "8, 16, 32, 64" and custom["Best Val Acc (%)"] == "no real run yet"
    assert custom["Original log best (%)"] == "—"
    assert "synthetic smoke data" in custom["Source"] and NOT_A_REPRODUCTION in custom["Source"]
    assert "widths 8,16,32,64" in custom["Source"] and "2 of 300 epochs" in custom["Source"]


def test_custom_row_counts_the_parameters_the_run_trained(tmp_path):
    """The earlier post-activation LightResNet18 without SE: 2,797,610 parameters (recorded by its CPU runs in
    report/runs/), although a model_config without SE does not say "no SE" to build_model."""
    run = load_run(fake_run(tmp_path / "lr18_post", "light_resnet18", [0.5], preact=False, se_reduction=0,
                            stochastic_depth_rate=0.0, init="default"))
    custom = table1([run]).iloc[4]
    assert custom["Model"].startswith("LightResNet18 (custom: preact False") and custom["#Params (M)"] == "2.80"


def test_table_files(tmp_path):
    paths = write_table1(table1([]), tmp_path / "report")
    md, tex = (tmp_path / "report" / "table1.md").read_text(), (tmp_path / "report" / "table1.tex").read_text()
    assert [p.name for p in paths] == ["table1.md", "table1.tex"]
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert [c.strip() for c in header.strip("|").split("|")] == TABLE_COLUMNS
    assert "| 5.00 " in md and "| 96.93 " in md and "no run yet" in md  # "5.00" kept, not turned into "5"
    assert "| 95.12 (hold-out) " in md and "where Table 1 prints 93.12" in md and "epoch 292 of 300" in md
    assert "optimistic" in md and "--val-source holdout" in md and "-{}-val-source holdout" in tex
    assert r"\#Params (M)" in tex and r"Val Acc (\%)" in tex and r"LightResNet18\_v2 (base=40)" in tex
    assert tex.count(r"\begin{tabular}") == 1 and r"\caption{" in tex and "{lllllrrrrp{6cm}}" in tex
    assert not re.search(r"(?<!\\)[#%_$]", tex), "every LaTeX special character is escaped, caption included"
    assert not list((tmp_path / "report").glob(".*"))


# -------------------------------------------------------------------------------- against the original logs
def test_log_comparison_per_run(tmp_path):
    """Mean absolute differences against the original logs' first epochs, as the notebooks printed them:
    RobustResNet64 epoch 1: loss 2.1139, val 45.63%; epoch 2: loss 1.9044, val 57.41%."""
    r64 = fake_run(tmp_path / "r64", "robust_resnet64", [0.4663, 0.5441], epochs=300)
    history = pd.read_csv(r64 / "history.csv")
    history["train_loss"] = [2.2139, 1.9044]
    history.to_csv(r64 / "history.csv", index=False)
    b45 = fake_run(tmp_path / "b45", "light_resnet18_v2_b45", [0.4], epochs=300)
    t = log_comparison([load_run(r64), load_run(b45)])
    first = t.iloc[0]
    # |46.63 - 45.63| = 1, |54.41 - 57.41| = 3: 2.00 points; |2.2139 - 2.1139| = 0.1, 0: 0.0500
    assert (first["Run"], first["Epochs compared"], first["Val acc MAE (points)"], first["Train loss MAE"]) == (
        "r64", 2, "2.00", "0.0500")
    assert first["Original log"] == "0.87709 - Best Model/0_87709.ipynb (val = test batch)"
    assert t.iloc[1]["Val acc MAE (points)"] == "no original log" and t.iloc[1]["Epochs compared"] == 0


# --------------------------------------------------------------------------------------------------- Figure 1
def dashed(ax):
    return {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"}


def test_figure_shows_the_run_on_its_whole_schedule_with_the_whole_original_log_dashed(tmp_path):
    run = load_run(fake_run(tmp_path / "r64_3", "robust_resnet64", [0.40, 0.55, 0.62], epochs=300))
    fig = plot_figure1(run)
    ax = fig.axes[0]
    assert fig._suptitle.get_text() == FIGURE_TITLE
    assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == "Accuracy (%)"
    train_line, best_line = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert train_line.get_color() == "green" and best_line.get_color() == "blue"
    assert list(train_line.get_ydata()) == pytest.approx([45, 60, 67])  # history.csv's train_acc, in percent
    assert list(best_line.get_ydata()) == pytest.approx([40, 55, 62])
    logged = dashed(ax)
    assert set(logged) == {"Original run's log: training accuracy",
                           "Original run's log: best validation accuracy so far"}
    # the log's epochs 1..3 as the notebook printed them: Approx Train Acc 23.37, 37.30, 42.90; Val Acc 45.63,
    # 57.41, 65.17 (the best so far is the same here: it rises every epoch)
    train_log = logged["Original run's log: training accuracy"]
    best_log = logged["Original run's log: best validation accuracy so far"]
    # the whole original run, epochs 1..300, on the x axis of this run's 300-epoch schedule; ours: its 3 epochs
    assert list(train_log.get_xdata()) == list(range(1, 301)) and list(best_log.get_xdata()) == list(range(1, 301))
    assert list(train_line.get_xdata()) == [1, 2, 3] and list(best_line.get_xdata()) == [1, 2, 3]
    low, high = ax.get_xlim()
    assert low <= 1 and high >= 300
    assert list(train_log.get_ydata()[:3]) == pytest.approx([23.37, 37.30, 42.90])
    assert list(best_log.get_ydata()[:3]) == pytest.approx([45.63, 57.41, 65.17])
    assert max(best_log.get_ydata()) == pytest.approx(96.93)  # the report's best, reached at epoch 292
    assert train_log.get_color() == "green" and best_log.get_color() == "blue"
    assert train_log.get_linewidth() < train_line.get_linewidth()
    assert train_line.get_label() == "Training accuracy"
    legend, = fig.legends
    assert legend.get_title().get_text() == ("dashed: AlperMumcular/DL-Project1 @ 0a11187, "
                                             "0.87709 - Best Model/0_87709.ipynb")
    assert ax.get_title().startswith(f"{NOT_A_REPRODUCTION} (3 of 300 epochs) — RobustResNet64: CIFAR-10")


def test_figure_of_one_epoch_shows_where_the_schedule_goes_and_a_short_schedule_stays_short(tmp_path):
    one = plot_figure1(load_run(fake_run(tmp_path / "r64_1", "robust_resnet64", [0.45], epochs=300)))
    ax = one.axes[0]
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [len(line.get_xdata()) for line in solid] == [1, 1]  # a point each, drawn with a marker
    assert all(line.get_marker() == "o" for line in solid)
    assert [len(line.get_xdata()) for line in dashed(ax).values()] == [300, 300]
    assert ax.get_xlim()[1] >= 300 and "(1 of 300 epochs)" in ax.get_title()
    # a 2-epoch schedule (the smoke profile's) is drawn over its 2 epochs, the log's first 2 beside it
    two = plot_figure1(load_run(fake_run(tmp_path / "r64_2", "robust_resnet64", [0.3, 0.4])))
    ax = two.axes[0]
    assert [list(line.get_xdata()) for line in dashed(ax).values()] == [[1, 2], [1, 2]]
    assert ax.get_xlim() == pytest.approx((0.5, 2.5))


def test_figure_full_run_log_and_models_without_or_with_a_holdout_log(tmp_path):
    real = load_run(fake_run(tmp_path / "r64", "robust_resnet64", FULL + [0.9]))
    fig = plot_figure1(real)
    best_log = dashed(fig.axes[0])["Original run's log: best validation accuracy so far"]
    assert len(best_log.get_xdata()) == 300 and max(best_log.get_ydata()) == pytest.approx(96.93)
    assert best_log.get_ydata()[291] == pytest.approx(96.93) and best_log.get_ydata()[290] < 96.93  # epoch 292
    assert NOT_A_REPRODUCTION not in fig.axes[0].get_title() and "300 epochs" in fig.axes[0].get_title()

    # a history.csv from before train_acc was lambda-weighted says what its green curve is
    old = fake_run(tmp_path / "old", "robust_resnet64", [0.3, 0.4])
    pd.read_csv(old / "history.csv").drop(columns="train_acc_dominant").to_csv(old / "history.csv", index=False)
    green = plot_figure1(load_run(old)).axes[0].get_lines()[0]
    assert green.get_label() == "Training accuracy (dominant label: an older history.csv)"

    b45 = plot_figure1(load_run(fake_run(tmp_path / "b45", "light_resnet18_v2_b45", [0.3, 0.4])))
    assert dashed(b45.axes[0]) == {} and len(b45.axes[0].get_lines()) == 2  # its log is lost: no dashed lines
    lr18 = plot_figure1(load_run(fake_run(tmp_path / "lr18", "light_resnet18", [0.3, 0.4])))
    assert set(dashed(lr18.axes[0])) == {"Original run's log: training accuracy",
                                         "Original run's log: best validation accuracy so far (5,000-image "
                                         "hold-out)"}


def test_figure_subtitle_names_every_difference_and_fits_the_image(tmp_path):
    # the longest labels there are: LightResNet18's hold-out log, an older history.csv, many changed settings
    lr18 = fake_run(tmp_path / "lr18", "light_resnet18", [0.3, 0.4, 0.5], epochs=300, data_official=False,
                    val_source="holdout", train_size=10000, val_size=2000, augment="full", mix_prob=0.5,
                    warmup_epochs=1.0, lr_step="iteration", stochastic_depth_mode="row", se_position="output",
                    init="default", erasing_value="random")
    pd.read_csv(lr18 / "history.csv").drop(columns="train_acc_dominant").to_csv(lr18 / "history.csv", index=False)
    run = load_run(lr18)
    assert len(run.shortfalls()) == 12
    fig = plot_figure1(run)
    title = fig.axes[0].title
    text = " ".join(title.get_text().split())
    assert text.startswith(f"{NOT_A_REPRODUCTION} ({'; '.join(run.shortfalls())}) — LightResNet18: "
                           "CIFAR-10 re-encoded copy")
    fig.canvas.draw()  # the layout is made when drawing, as when saving
    renderer = fig.canvas.get_renderer()
    assert title.get_text().count("\n") >= 1, "a long subtitle is wrapped"
    page = fig.bbox
    for artist in (title, fig.legends[0]):
        box = artist.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    box = title.get_window_extent(renderer)
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert suptitle.y0 >= box.y1 - 1, "the subtitle stays below the figure title"


def test_figure_run_is_a_reproduction_then_robust_resnet64_then_the_newest(tmp_path):
    smoke = load_run(fake_run(tmp_path / "smoke", "robust_resnet64", [0.99], profile="smoke",
                              data_source="synthetic", written=5000))
    lr18_new = load_run(fake_run(tmp_path / "lr18_new", "light_resnet18", [0.5, 0.6], written=4000))
    r64_old = load_run(fake_run(tmp_path / "r64_old", "robust_resnet64", [0.3, 0.4], written=1000))
    lr18_real = load_run(fake_run(tmp_path / "lr18_real", "light_resnet18", FULL + [0.6], written=100))
    assert pick_figure_run([lr18_new, lr18_real, r64_old, smoke]).path.name == "lr18_real"
    assert pick_figure_run([lr18_new, r64_old, smoke]).path.name == "smoke"  # RobustResNet64, newest
    assert pick_figure_run([lr18_new, r64_old]).path.name == "r64_old"
    assert pick_figure_run([lr18_new]).path.name == "lr18_new"
    same_time = [load_run(fake_run(tmp_path / name, "light_resnet18", [0.5], written=300)) for name in "ab"]
    assert pick_figure_run(same_time).path.name == "b"  # of equal times, the one given last
    with pytest.raises(UserError):
        pick_figure_run([])


# ------------------------------------------------------------------------------------------------- run loading
def test_load_run_errors_name_the_file(tmp_path, smoke_run):
    def copy(name, drop=None, history=None, config=None):
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "history.csv"):
            if f != drop:
                (d / f).write_bytes((smoke_run / f).read_bytes())
        if history is not None:
            (d / "history.csv").write_text(history)
        if config is not None:
            (d / "config.json").write_text(config)
        return d

    cases = [(tmp_path / "absent", "absent: no such run folder"),
             (copy("no_hist", drop="history.csv"), "history.csv: no such file"),
             (copy("no_conf", drop="config.json"), "config.json: no such file"),
             (copy("bad_conf", config="{not json"), "config.json: not valid JSON"),
             (copy("empty_hist", history=""), "history.csv: not a readable history CSV"),
             (copy("cols", history="epoch,lr\n1,0.1\n"),
              "history.csv: missing column(s) train_acc, val_acc, best_val_acc"),
             (copy("no_best", history="epoch,train_acc,val_acc\n1,0.5,0.5\n"),
              "history.csv: missing column(s) best_val_acc"),
             (copy("no_rows", history="epoch,train_acc,val_acc,best_val_acc\n"),
              "history.csv: no epochs recorded yet"),
             (copy("no_model", config=json.dumps({"model": "light_resnet18"})), "config.json: no model_config")]
    for path, why in cases:
        with pytest.raises(UserError) as info:
            load_run(path)
        assert why in str(info.value) and str(path.name) in str(info.value)


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(smoke_run, tmp_path):
    real = fake_run(tmp_path / "r64", "robust_resnet64", FULL + [0.7])
    figures, report = tmp_path / "figures", tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "lib.report", "--runs", str(smoke_run), str(real),
                           "--figures", str(figures), "--report", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (figures / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figures / "figure1.pdf").read_bytes()[:5] == b"%PDF-"
    assert min((figures / f).stat().st_size for f in ("figure1.png", "figure1.pdf")) > 5000
    md = (report / "table1.md").read_text()
    assert "| 70.00 " in md and "NOT a reproduction" in md and (report / "table1.tex").stat().st_size > 0
    assert f"Figure 1 shows {real}" in done.stdout
    # the comparison with the logs: RobustResNet64's 300 epochs against its log; the custom smoke run has none
    comparison = done.stdout.split("Against the original run's log")[1]
    assert re.search(r"\| r64\s+\| robust_resnet64\s+\| 300\s+\| 300\s+\|", comparison)
    assert re.search(r"\| smoke_lr18_b8\s+\| light_resnet18\s+\| 2\s+\| 2\s+\|", comparison)
    assert sorted(p.name for p in figures.iterdir()) == ["figure1.pdf", "figure1.png"]


def test_cli_smoke_only_and_bad_inputs(smoke_run, tmp_path, capsys):
    assert run_cli(main, ["--runs", str(smoke_run), "--figures", str(tmp_path / "f"),
                          "--report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "f" / "figure1.png").stat().st_size > 0
    assert "LightResNet18 (custom" in capsys.readouterr().out

    missing = tmp_path / "nope"
    assert run_cli(main, ["--runs", str(smoke_run), str(missing), "--figures", str(tmp_path / "f2"),
                          "--report", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err
    assert not (tmp_path / "f2").exists() and not (tmp_path / "r2").exists(), "nothing written on bad input"

    for argv, named in ([["--runs", str(smoke_run), "--bogus"], "--bogus"], [[], "--runs"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err


def test_config_json_keys_used_by_the_report_exist(smoke_run):
    """The report reads what lib.train writes: guard the fields it relies on."""
    config = json.loads((smoke_run / "config.json").read_text())
    assert {"model_config", "data_source", "n_train", "n_val", "profile", "epochs", "amp_dtype", "device_name",
            "world_size"} <= set(config)
    run = load_run(smoke_run)
    assert run.epochs_done == 2 and not run.is_real and 0 <= run.best_val_acc <= 1
    assert run.precision == "fp32" and run.device_label == "CPU"
    assert not any(s.startswith("not recorded") for s in run.shortfalls()), "lib.train records every setting"


def test_committed_runs_written_before_se_reduction_was_0_keep_their_rows():
    """report/runs/cpu_robust_resnet64 recorded "no SE" as se_reduction null: it is still RobustResNet64's run,
    1 of 300 epochs and nothing else, not a custom architecture."""
    runs = [load_run(REPO / "report/runs/cpu_robust_resnet64"),
            load_run(REPO / "report/runs/cpu_light_resnet18_holdout")]
    assert runs[0].model_config["se_reduction"] is None and runs[0].shortfalls() == ["1 of 300 epochs"]
    table = table1(runs)
    assert len(table) == 4 and row(table, "RobustResNet64")["Source"].endswith("[cpu_robust_resnet64]")


def test_placement_and_mode_count_wherever_either_model_has_the_block(tmp_path):
    """SE placement and stochastic-depth mode compute nothing only where neither the run's model nor the paper's
    has the block: LightResNet18_v2 with both turned off, or RobustResNet64 with stochastic depth turned on, name
    them."""
    off = load_run(fake_run(tmp_path / "v2_off", "light_resnet18_v2", FULL + [0.9], se_reduction=0,
                            se_position="output", stochastic_depth_rate=0.0, stochastic_depth_mode="row"))
    assert off.shortfalls() == ["stochastic_depth_rate 0", "se_reduction 0", "se_position output",
                                "stochastic_depth_mode row"]  # in model_config's order
    on = load_run(fake_run(tmp_path / "r64_sd", "robust_resnet64", FULL + [0.9], stochastic_depth_rate=0.1,
                           stochastic_depth_mode="row"))
    assert on.shortfalls() == ["stochastic_depth_rate 0.1", "stochastic_depth_mode row"]


def test_schedule_processes_and_unrecorded_settings_are_named(tmp_path):
    # 300 epochs of a 400-epoch schedule, then all 400
    longer = load_run(fake_run(tmp_path / "longer", "robust_resnet64", FULL + [0.9], epochs=400))
    assert longer.shortfalls() == ["300 epochs (400-epoch schedule, not 300)"]
    done = load_run(fake_run(tmp_path / "done", "robust_resnet64", FULL + [0.9] * 101))
    assert done.shortfalls() == ["400 epochs (400-epoch schedule, not 300)"]
    two = load_run(fake_run(tmp_path / "two", "robust_resnet64", FULL + [0.9], extra={"world_size": 2}))
    assert two.shortfalls() == ["batch norm per process (2 processes without sync_bn)"]
    unknown = load_run(fake_run(tmp_path / "unknown", "robust_resnet64", FULL + [0.9], extra={"world_size": None}))
    assert unknown.shortfalls() == [], "no world_size recorded: one process"
    run_dir = fake_run(tmp_path / "old", "robust_resnet64", FULL + [0.9])
    config = json.loads((run_dir / "config.json").read_text())
    del config["momentum"], config["lr"]
    (run_dir / "config.json").write_text(json.dumps(config))
    assert load_run(run_dir).shortfalls() == ["not recorded: lr, momentum"]


def test_a_history_csv_pandas_cannot_parse_is_one_line(tmp_path):
    run_dir = fake_run(tmp_path / "run", "robust_resnet64", [0.5, 0.6])
    (run_dir / "history.csv").write_text("epoch,train_acc,val_acc,best_val_acc\n1,0.5,0.5,0.5\n2,0.6,0.6,0.6,9,9\n")
    with pytest.raises(UserError) as info:
        load_run(run_dir)
    assert str(info.value) == (f"{run_dir / 'history.csv'}: not a readable history CSV (Error tokenizing data. "
                               f"C error: Expected 4 fields in line 3, saw 6)")
