"""The hyper-parameter study figure and table (lib.scale.sweep_report) on a hand-made sweep folder: no Ray needed."""
import csv
import json

import pytest

from lib.scale import sweep_report as report
from lib.common import run_cli
from lib.config import make_config, save_config

# best val acc per (dropout, lr) -- chosen so every mean below is easy to check by hand
ACC = {(0.0, 0.05): 0.50, (0.0, 0.1): 0.70, (0.2, 0.05): 0.30, (0.2, 0.1): 0.40}


def make_sweep(root):
    rows = []
    for i, ((dropout, lr), best) in enumerate(ACC.items()):
        run_dir = root / "runs" / f"{i:03d}"
        cfg = make_config("smoke", model="light_resnet18", dropout=dropout, lr=lr, epochs=2, out=str(run_dir))
        save_config(cfg, run_dir / "config.json", extra={"data_source": "synthetic", "n_train": 40, "n_val": 20,
                                                         "model_config": {"name": "light_resnet18"}})
        with open(run_dir / "history.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train_acc", "val_acc", "best_val_acc"])
            w.writerows([[1, 0.2, best, best], [2, 0.3, best - 0.1, best]])  # best at epoch 1, final lower
        rows.append({"trial": i, "dropout": dropout, "lr": lr, "status": "finished", "run_dir": f"runs/{i:03d}"})
    rows.append({"trial": 4, "dropout": 0.2, "lr": 0.2, "status": "pending", "run_dir": "runs/004"})
    (root / "sweep.json").write_text(json.dumps({"params": {"dropout": [0.0, 0.2], "lr": [0.05, 0.1, 0.2]}}))
    with open(root / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_sweep_figure_has_a_panel_per_parameter_and_a_line_per_value_of_the_other(tmp_path):
    spec, trials = report.load_sweep(make_sweep(tmp_path / "sw"))
    fig = report.plot_sweep(spec, trials)
    ax_dropout, ax_lr = fig.axes
    assert ax_dropout.get_xlabel() == "dropout" and ax_lr.get_xlabel() == "lr"
    # panel "dropout": one line per lr; x = dropout 0.0, 0.2; y = best val acc in %
    lines = {line.get_label(): list(line.get_ydata()) for line in ax_dropout.get_lines()}
    assert lines["lr = 0.05"] == pytest.approx([50, 30]) and lines["lr = 0.1"] == pytest.approx([70, 40])
    lines = {line.get_label(): list(line.get_ydata()) for line in ax_lr.get_lines()}
    assert lines["dropout = 0.0"] == pytest.approx([50, 70]) and lines["dropout = 0.2"] == pytest.approx([30, 40])
    # the pending trial (lr 0.2, no run folder yet) is in the table but not on the figure
    assert [t.get_text() for t in ax_lr.get_xticklabels()] == ["0.05", "0.1"]
    assert any("NOT a reproduction" in t.get_text() for t in fig.texts)


def test_sweep_report_writes_figure_and_table_best_first(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "dropout_lr")
    assert run_cli(report.main, [str(sweep_dir), "--figures", str(tmp_path / "fig"),
                                 "--report", str(tmp_path / "rep")]) == 0
    for name in ("sweep_dropout_lr.png", "sweep_dropout_lr.pdf"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
    table = (tmp_path / "rep" / "sweep_dropout_lr.md").read_text().splitlines()
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(r[0], r[4], r[5], r[6]) for r in body] == [("1", "2/2", "70.00", "60.00"), ("0", "2/2", "50.00", "40.00"),
                                                        ("3", "2/2", "40.00", "30.00"), ("2", "2/2", "30.00", "20.00"),
                                                        ("4", "", "", "")]
    assert body[-1][3] == "pending"


def test_sweep_report_on_a_folder_without_a_sweep_is_one_line(tmp_path, capsys):
    assert run_cli(report.main, [str(tmp_path)]) == 2
    assert "sweep.json: no such file" in capsys.readouterr().err
