"""Report: Figure 1 and Table 1 from run folders; smoke/synthetic numbers never pass as a reproduction."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lib.common import UserError, run_cli
from lib.config import make_config, save_config
from lib.models import build_model
from lib.report import (FIGURE_TITLE, NOT_A_REPRODUCTION, TABLE_COLUMNS, load_run, main, pick_figure_run,
                        plot_figure1, table1, write_table1)
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
             data_official=True, **overrides) -> Path:
    """A run folder as lib.train writes it (config.json + history.csv), without training: the table's policy
    is about where a number came from, and real CIFAR-10 runs cannot happen in a test.
    ``data_official=None`` leaves the field out (a config.json that does not record it)."""
    cfg = make_config(profile, model=model, out=str(run_dir), epochs=epochs or len(val_accs), **overrides)
    n_train = cfg.train_size or 50000
    extra = {"model_config": build_model(model, **cfg.model_overrides()).config, "data_source": data_source,
             "data_description": f"{data_source} data", "n_train": n_train, "n_val": cfg.val_size or 10000}
    if data_official is not None:
        extra["data_official"] = data_official and data_source == "cifar10"
    save_config(cfg, run_dir / "config.json", extra=extra)
    val = pd.Series(val_accs, dtype=float)
    pd.DataFrame({"epoch": range(1, len(val) + 1), "lr": 0.1, "train_loss": 1.0,
                  "train_acc": (val + 0.05).clip(upper=1.0), "val_loss": 1.0, "val_acc": val,
                  "best_val_acc": val.cummax(), "epoch_seconds": 1.0}).to_csv(run_dir / "history.csv", index=False)
    return run_dir


def row(table: pd.DataFrame, label: str) -> pd.Series:
    match = table[table["Model"] == label]
    assert len(match) == 1, f"one row labelled {label!r}"
    return match.iloc[0]


# ---------------------------------------------------------------------------------------------------- Table 1
# The original report's Table 1: #Params (M), N, B, C and Val Acc (%) as printed
REPORT_TABLE1 = {"LightResNet18": (2.81, "4", "2 (per group)", "32, 64, 128, 256", "93.12"),
                 "LightResNet18_v2 (base=40)": (4.39, "4", "2 (per group)", "40, 80, 160, 320", "94.35"),
                 "LightResNet18_v2 (base=45)": (5.00, "4", "2 (per group)", "45, 90, 170, 340", "94.88"),
                 "RobustResNet64": (3.80, "3", "10 (per group)", "32, 64, 128", "96.93")}


def test_table_lists_the_four_models_with_the_reports_columns():
    t = table1([])
    assert list(t.columns) == TABLE_COLUMNS
    assert list(t["Model"]) == list(REPORT_TABLE1)
    for label, (params_m, n, b, c, val_acc) in REPORT_TABLE1.items():
        r = row(t, label)
        # our count of the built model; the report rounds differently for LightResNet18 (2.80 vs 2.81)
        assert abs(float(r["#Params (M)"]) - params_m) <= 0.011, label
        assert [r["N"], r["B"], r["C"], r["Reported Val Acc (%)"]] == [n, b, c, val_acc], label
        assert r["Best Val Acc (%)"] == r["Final Val Acc (%)"] == "no run yet"


def test_smoke_and_synthetic_numbers_never_fill_the_val_acc_column(tmp_path):
    runs = [load_run(fake_run(tmp_path / "smoke_r64", "robust_resnet64", [0.2, 0.42], profile="smoke",
                              data_source="synthetic")),
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
    assert "synthetic smoke data" in row(t, "RobustResNet64")["Source"]
    assert "smoke profile, 2 epochs" in row(t, "RobustResNet64")["Source"]
    reasons = "(synthetic smoke data; smoke profile; training subset; validation subset)"
    assert reasons in row(t, "RobustResNet64")["Source"]
    assert "train subset 500 images" in row(t, "LightResNet18_v2 (base=45)")["Source"]
    assert row(t, "LightResNet18")["Best Val Acc (%)"] == "no run yet"
    for column in ("Best Val Acc (%)", "Final Val Acc (%)"):
        assert not any(v.replace(".", "").isdigit() for v in t[column]), "no number in the measured columns"


def test_finished_full_runs_fill_the_columns_best_one_wins(tmp_path):
    runs = [load_run(fake_run(tmp_path / "lr18_a", "light_resnet18", [0.80, 0.9012, 0.89])),
            # higher, but in progress (2 of 300 epochs), on a validation subset, or synthetic: none counts
            load_run(fake_run(tmp_path / "lr18_b", "light_resnet18", [0.85, 0.9150], epochs=300)),
            load_run(fake_run(tmp_path / "lr18_valsub", "light_resnet18", [0.95, 0.96], val_size=1000)),
            load_run(fake_run(tmp_path / "lr18_smoke", "light_resnet18", [0.99], profile="smoke",
                              data_source="synthetic")),
            load_run(fake_run(tmp_path / "r64_drop", "robust_resnet64", [0.70, 0.75], dropout=0.2))]
    t = table1(runs)
    lr18 = row(t, "LightResNet18")
    # best epoch 2 (90.12), the last epoch 89.00: both shown, from the same run
    assert (lr18["Best Val Acc (%)"], lr18["Final Val Acc (%)"], lr18["Reported Val Acc (%)"]) == (
        "90.12", "89.00", "93.12")
    assert lr18["Source"] == "CIFAR-10 (val = official test batch, 10000 images), paper profile, 3 epochs [lr18_a]"
    r64 = row(t, "RobustResNet64")  # other dropout: still the RobustResNet64 architecture, and Source says so
    assert r64["Best Val Acc (%)"] == r64["Final Val Acc (%)"] == "75.00" and "dropout 0.2" in r64["Source"]
    assert len(t) == 4

    unfinished = load_run(tmp_path / "lr18_b")
    assert not unfinished.is_real and unfinished.shortfalls() == ["unfinished, 2 of 300 epochs"]
    only_unfinished = row(table1([unfinished]), "LightResNet18")
    assert only_unfinished["Best Val Acc (%)"] == "no real run yet"
    assert ("best val 91.50%, final 91.50% — NOT a reproduction (unfinished, 2 of 300 epochs)"
            in only_unfinished["Source"])
    assert load_run(tmp_path / "lr18_valsub").shortfalls() == ["validation subset"]


def test_holdout_run_counts_and_copies_are_labelled(tmp_path):
    """The full 10% hold-out is a full validation set; a copy that is not the official release is named so."""
    holdout = load_run(fake_run(tmp_path / "r64_holdout", "robust_resnet64", [0.9, 0.93], val_source="holdout"))
    copy = load_run(fake_run(tmp_path / "lr18_copy", "light_resnet18", [0.8, 0.85], data_official=False))
    unknown = load_run(fake_run(tmp_path / "lr18_unknown", "light_resnet18", [0.8, 0.84], data_official=None))
    assert holdout.is_real and copy.is_real and unknown.is_real
    t = table1([holdout, copy])
    assert row(t, "RobustResNet64")["Best Val Acc (%)"] == "93.00"
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
    assert custom["#Params (M)"] == "0.18"  # 176,402: a quarter of LightResNet18's widths, ~1/16 of its weights
    assert custom["C"] == "8, 16, 32, 64" and custom["Best Val Acc (%)"] == "no real run yet"
    assert "synthetic smoke data" in custom["Source"] and NOT_A_REPRODUCTION in custom["Source"]
    assert "smoke profile, 2 epochs" in custom["Source"]


def test_table_files(tmp_path):
    paths = write_table1(table1([]), tmp_path / "report")
    md, tex = (tmp_path / "report" / "table1.md").read_text(), (tmp_path / "report" / "table1.tex").read_text()
    assert [p.name for p in paths] == ["table1.md", "table1.tex"]
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert [c.strip() for c in header.strip("|").split("|")] == TABLE_COLUMNS
    assert "| 5.00 " in md and "| 96.93 " in md and "no run yet" in md  # "5.00" kept, not turned into "5"
    assert "optimistic" in md and "--val-source holdout" in md and "-{}-val-source holdout" in tex
    assert r"\#Params (M)" in tex and r"Val Acc (\%)" in tex and r"LightResNet18\_v2 (base=40)" in tex
    assert tex.count(r"\begin{tabular}") == 1 and r"\caption{" in tex
    assert not re.search(r"(?<!\\)[#%_$]", tex), "every LaTeX special character is escaped, caption included"
    assert not list((tmp_path / "report").glob(".*"))


# --------------------------------------------------------------------------------------------------- Figure 1
def test_figure_shows_the_best_real_run_in_the_reports_style(tmp_path):
    runs = [load_run(fake_run(tmp_path / "smoke", "robust_resnet64", [0.99], profile="smoke",
                              data_source="synthetic")),
            load_run(fake_run(tmp_path / "real_low", "light_resnet18", [0.5, 0.6])),
            load_run(fake_run(tmp_path / "real_high", "robust_resnet64", [0.6, 0.8, 0.7]))]
    shown = pick_figure_run(runs)
    assert shown.path.name == "real_high"
    fig = plot_figure1(shown)
    ax = fig.axes[0]
    assert fig._suptitle.get_text() == FIGURE_TITLE
    assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == "Accuracy (%)"
    train_line, best_line = ax.get_lines()
    assert train_line.get_color() == "green" and best_line.get_color() == "blue"
    assert list(best_line.get_ydata()) == pytest.approx([60, 80, 80])  # best so far, in percent
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "Training accuracy"
    assert NOT_A_REPRODUCTION not in ax.get_title()

    smoke_only = plot_figure1(pick_figure_run(runs[:1]))
    assert smoke_only.axes[0].get_title().startswith(f"{NOT_A_REPRODUCTION} (synthetic smoke data; smoke profile")


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
    real = fake_run(tmp_path / "r64", "robust_resnet64", [0.5, 0.7])
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
    assert {"model_config", "data_source", "n_train", "n_val", "profile", "epochs"} <= set(config)
    run = load_run(smoke_run)
    assert run.epochs_done == 2 and not run.is_real and 0 <= run.best_val_acc <= 1
