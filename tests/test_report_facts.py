"""lib.report in process, on fake run folders (test_report.fake_run: config.json + history.csv, no training):
the command line's output and the files it writes, Table 1's rows, the comparison with the original logs, Figure 1,
the LaTeX caption and report.md's generated part.

Every expected value is written out by hand: text a user reads, numbers from the original logs
(report/reference/*.csv, looked up once), parameter counts as the original notebooks print them, pixel sizes of a
7 x 5 inch figure at 150 dpi, the files' magic bytes, LaTeX's special characters.
"""
import contextlib
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from lib.common import UserError
from lib.report import (_latex_escape, archive_metrics, log_comparison, main, make_report, pick_figure_run,
                        plot_figure1, source_line, table1, write_table1)
from lib.runs import load_run
from test_report import fake_run, row

# Original logs' first epochs as the notebooks printed them (report/reference/):
# LightResNet18 (5,000-image hold-out): epoch 1 loss 2.1250 val 39.90%, epoch 2 loss 1.9533 val 50.34%;
# LightResNet18_v2 (test batch): epoch 1 loss 2.0815 val 47.50%, epoch 2 loss 1.8909 val 58.55%.
LR18_NOTEBOOK = "0.84517/0_84517.ipynb"
V2_NOTEBOOK = "0.86851/086851.ipynb"
R64_NOTEBOOK = "0.87709 - Best Model/0_87709.ipynb"
COMPARISON_COLUMNS = ["Run", "Model", "Epochs (run)", "Epochs compared", "Val acc MAE (points)", "Train loss MAE",
                      "Original log"]
H200 = "CIFAR-10 (val = official test batch, 10000 images), paper profile, NVIDIA H200, bf16 AMP"
MARKED = ("# Write-up — ünïcode\n\nBefore the table.\n<!-- table1:start -->\nold row 1\nold row 2\n"
          "<!-- table1:end -->\n\nAfter the table — kept.\n")


def set_history(run_dir: Path, written: float, **columns) -> Path:
    """Replace history.csv columns (e.g. train_loss) and set its modification time (the newest run's clock)."""
    history = pd.read_csv(run_dir / "history.csv")
    for name, values in columns.items():
        history[name] = values
    history.to_csv(run_dir / "history.csv", index=False)
    os.utime(run_dir / "history.csv", (written, written))
    return run_dir


def markdown_cells(lines: list[str]) -> list[list[str]]:
    """A Markdown table's rows as stripped cells, the |---| separator left out."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
            if not set(line) <= set("|-: ")]


def quiet_main(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture
def cli(tmp_path):
    """`python -m lib.report` in process: two non-reproductions on CIFAR-10, --figure-run naming the older one,
    a report.md with the table markers. Function scope: mutmut runs a mutant against the tests that reached it,
    and counts a module fixture's calls for the first test only."""
    base = tmp_path
    lr18 = set_history(fake_run(base / "runs" / "lr18", "light_resnet18", [0.419, 0.4834], epochs=300), 1000,
                       train_loss=[2.0250, 2.0533])
    v2 = set_history(fake_run(base / "runs" / "v2", "light_resnet18_v2", [0.485, 0.5755]), 2000,
                     train_loss=[2.0015, 1.9109])
    figures, report = base / "fig", base / "rep"
    report.mkdir()
    (report / "report.md").write_text(MARKED, encoding="utf-8")
    rc, out = quiet_main(["--runs", str(lr18), str(v2), "--figures", str(figures), "--report", str(report),
                          "--figure-run", str(lr18)])
    return {"rc": rc, "out": out, "lr18": lr18, "v2": v2, "figures": figures, "report": report}


def test_cli_prints_table1_with_the_runs_numbers_and_source_as_typed(cli):
    """Table 1 as printed (index-free, "5.00" not "5"): #Params from the notebooks' counts (2,811,192 -> 2.81,
    4,389,826 -> 4.39, 4,998,947 -> 5.00, 3,799,978 -> 3.80), the report's and the logs' numbers, the runs' Source."""
    assert cli["rc"] == 0
    lines = cli["out"].splitlines()
    assert markdown_cells(lines[:6]) == [
        ["Model", "#Params (M)", "N", "B", "C", "Best Val Acc (%)", "Final Val Acc (%)", "Reported Val Acc (%)",
         "Original log best (%)", "Source"],
        ["LightResNet18", "2.81", "4", "2 (per group)", "32, 64, 128, 256", "no real run yet", "no real run yet",
         "93.12", "95.12 (hold-out)",
         f"{H200}: best val 48.34%, final 48.34% — NOT a reproduction (2 of 300 epochs) [lr18]"],
        ["LightResNet18_v2 (base=40)", "4.39", "4", "2 (per group)", "40, 80, 160, 320", "no real run yet",
         "no real run yet", "94.35", "96.11",
         f"{H200}: best val 57.55%, final 57.55% — NOT a reproduction (2 of 300 epochs (2-epoch schedule)) [v2]"],
        ["LightResNet18_v2 (base=45)", "5.00", "4", "2 (per group)", "45, 90, 170, 340", "no run yet",
         "no run yet", "94.88", "—", "—"],
        ["RobustResNet64", "3.80", "3", "10 (per group)", "32, 64, 128", "no run yet", "no run yet", "96.93",
         "96.93", "—"]]
    # the printed table is table1.md's, line for line
    assert lines[:6] == (cli["report"] / "table1.md").read_text(encoding="utf-8").splitlines()[2:8]


def test_cli_prints_the_comparison_with_the_original_logs(cli):
    """Printed as computed ("2.00", not "2"). LightResNet18 against its log: |41.90 - 39.90| = |48.34 - 50.34| = 2
    -> 2.00 points; |2.0250 - 2.1250| = |2.0533 - 1.9533| = 0.1 -> 0.1000. LightResNet18_v2: |48.50 - 47.50| =
    |57.55 - 58.55| = 1 -> 1.00; |2.0015 - 2.0815| = 0.08, |1.9109 - 1.8909| = 0.02 -> 0.0500."""
    lines = cli["out"].splitlines()
    assert lines[6:8] == ["", "Against the original run's log (mean absolute difference over the epochs both have):"]
    assert markdown_cells(lines[8:12]) == [
        COMPARISON_COLUMNS,
        ["lr18", "light_resnet18", "2", "2", "2.00", "0.1000", f"{LR18_NOTEBOOK} (val = 5,000-image hold-out)"],
        ["v2", "light_resnet18_v2", "2", "2", "1.00", "0.0500", f"{V2_NOTEBOOK} (val = test batch)"]]


def test_cli_names_the_figure_run_given_and_every_file_written(cli):
    """--figure-run wins over the default (v2, the newer run); "wrote" lists the figures, the tables, report.md
    (its table changed) and each real-data run's config.json and history.csv copied under report/runs/."""
    fig, rep = cli["figures"], cli["report"]
    lines = cli["out"].splitlines()
    assert lines[12:] == [
        f"Figure 1 shows {cli['lr18']}",
        f"wrote {fig}/figure1.png, {fig}/figure1.pdf, {rep}/table1.md, {rep}/table1.tex, {rep}/report.md, "
        f"{rep}/runs/lr18/config.json, {rep}/runs/lr18/history.csv, {rep}/runs/v2/config.json, "
        f"{rep}/runs/v2/history.csv"]
    for name in ("lr18", "v2"):
        for f in ("config.json", "history.csv"):
            assert (rep / "runs" / name / f).read_bytes() == (cli[name] / f).read_bytes()


def test_cli_figure_files_are_a_7_by_5_inch_png_at_150_dpi_and_a_pdf(cli):
    """7 x 5 inches at 150 dpi: 1050 x 750 pixels; PNG's and PDF's magic bytes."""
    fig = cli["figures"]
    assert sorted(p.name for p in fig.iterdir()) == ["figure1.pdf", "figure1.png"]
    png = (fig / "figure1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(fig / "figure1.png").size == (1050, 750)
    assert (fig / "figure1.pdf").read_bytes()[:5] == b"%PDF-"


def test_cli_replaces_report_md_table_between_the_markers_only(cli):
    """report.md: the lines outside the markers byte for byte as written, table1.md's text between them."""
    md = (cli["report"] / "table1.md").read_text(encoding="utf-8")
    assert (cli["report"] / "report.md").read_bytes() == (
        "# Write-up — ünïcode\n\nBefore the table.\n<!-- table1:start -->\n" + md.strip()
        + "\n<!-- table1:end -->\n\nAfter the table — kept.\n").encode("utf-8")


def test_cli_default_folders_skip_synthetic_runs_and_leave_the_write_up(tmp_path, monkeypatch):
    """Without --figures/--report: figures/ and report/ of the working folder. A synthetic smoke run in the list:
    report.md untouched, the smoke run not archived; the default figure run is RobustResNet64's."""
    monkeypatch.chdir(tmp_path)
    fake_run(Path("runs/smoke"), "robust_resnet64", [0.2, 0.42], profile="smoke", data_source="synthetic",
             amp_dtype=None, device_name="cpu (x86_64, 2 threads)", written=1000)
    fake_run(Path("runs/lr18"), "light_resnet18", [0.5], written=2000)
    Path("report").mkdir()
    Path("report/report.md").write_text(MARKED, encoding="utf-8")
    rc, out = quiet_main(["--runs", "runs/smoke", "runs/lr18"])
    assert rc == 0
    assert out.splitlines()[-2:] == [
        "Figure 1 shows runs/smoke",
        "wrote figures/figure1.png, figures/figure1.pdf, report/table1.md, report/table1.tex, "
        "report/runs/lr18/config.json, report/runs/lr18/history.csv"]
    assert Path("figures/figure1.png").is_file() and Path("report/table1.tex").is_file()
    assert Path("report/report.md").read_text(encoding="utf-8") == MARKED
    assert not Path("report/runs/smoke").exists()


def test_cli_without_runs_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("python -m lib.report: error: give --runs RUN_DIR ... (a sweep's figure and "
                                       "table: python -m lib.scale.sweep_report)\n")


def test_cli_help_names_every_option_as_a_user_reads_it(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    for expected in ("usage: python -m lib.report [-h] [--runs RUN_DIR [RUN_DIR ...]] [--figures FIGURES] "
                     "[--report REPORT] [--figure-run RUN_DIR]",
                     "Figure 1 (figures/figure1.png, .pdf) and Table 1 (report/table1.md, .tex) from run folders.",
                     "--runs RUN_DIR [RUN_DIR ...] run folders written by lib.train",
                     "--figures FIGURES folder for figure1.png / figure1.pdf",
                     "--report REPORT folder for table1.md / table1.tex",
                     "--figure-run RUN_DIR run shown in Figure 1 (default: a reproduction before any other, "
                     "RobustResNet64 first, then the newest)"):
        assert expected in text, expected


def test_make_report_defaults_to_figures_and_report_and_returns_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(Path("runs/v2"), "light_resnet18_v2", [0.5])
    result = make_report(["runs/v2"])
    assert set(result) == {"table", "against_logs", "figure_run", "paths"}
    assert result["figure_run"] == Path("runs/v2")
    assert result["paths"] == [Path(p) for p in (
        "figures/figure1.png", "figures/figure1.pdf", "report/table1.md", "report/table1.tex",
        "report/runs/v2/config.json", "report/runs/v2/history.csv")]
    assert row(result["table"], "LightResNet18_v2 (base=40)")["Source"].endswith("[v2]")
    assert list(result["against_logs"]["Run"]) == ["v2"]


# -------------------------------------------------------------------------------------------- archive_metrics
def test_archive_copies_real_runs_skips_synthetic_and_runs_already_archived(tmp_path):
    """A synthetic run first and a run already inside report/runs/ do not stop the real run after them."""
    report = tmp_path / "report"
    synth = load_run(fake_run(tmp_path / "runs" / "synth", "light_resnet18", [0.3], data_source="synthetic"))
    inside = load_run(fake_run(report / "runs" / "inside", "light_resnet18", [0.4], written=1000))
    real = load_run(fake_run(tmp_path / "runs" / "real", "robust_resnet64", [0.5]))
    before = (inside.path / "config.json").read_bytes()
    paths = archive_metrics([synth, inside, real], str(report))
    assert paths == [report / "runs" / "real" / "config.json", report / "runs" / "real" / "history.csv"]
    for f in ("config.json", "history.csv"):
        assert (report / "runs" / "real" / f).read_bytes() == (real.path / f).read_bytes()
    assert sorted(p.name for p in (report / "runs").iterdir()) == ["inside", "real"]  # no synth
    assert (inside.path / "config.json").read_bytes() == before
    assert (inside.path / "history.csv").stat().st_mtime == 1000, "not copied onto itself"


# ---------------------------------------------------------------------------------------------- write_table1
def test_table_files_title_note_latex_label_rules_and_escaped_caption(tmp_path):
    write_table1(table1([]), tmp_path)
    md = (tmp_path / "table1.md").read_text(encoding="utf-8")
    tex = (tmp_path / "table1.tex").read_text(encoding="utf-8")
    first, blank, header = md.splitlines()[:3]
    assert (first, blank) == ("Table 1: List of Model Configurations Experimented.", "")
    assert header.startswith("| Model ")  # no index column
    assert md.endswith("#Params, N (groups), B (blocks per group) and C (channels) are computed from lib.models.\n")
    assert ("\\caption{List of Model Configurations Experimented. Best / Final Val Acc (\\%): the highest and the "
            "last epoch's validation accuracy in the run's history.csv (no TTA)") in tex
    assert "-{}-val-source holdout keeps the test set clean" in tex
    assert "\\label{tab:table1}" in tex
    assert "\\begin{tabular}{lllllrrrrp{6cm}}" in tex
    assert [line for line in tex.splitlines() if line.endswith("rule")] == ["\\toprule", "\\midrule", "\\bottomrule"]


def test_latex_escape_every_special_character_by_hand():
    assert _latex_escape(r"a\b & 5% $x #1 a_b {c} ~ ^ --val-source") == (
        r"a\textbackslash{}b \& 5\% \$x \#1 a\_b \{c\} \textasciitilde{} \textasciicircum{} -{}-val-source")
    assert _latex_escape("plain text, 96.93 (hold-out)") == "plain text, 96.93 (hold-out)"


def test_report_md_updated_by_default_and_only_when_its_table_changes(tmp_path):
    report_md = tmp_path / "report.md"
    report_md.write_text(MARKED, encoding="utf-8")
    paths = write_table1(table1([]), tmp_path)  # update_write_up defaults to True
    assert paths == [tmp_path / "table1.md", tmp_path / "table1.tex", report_md]
    md = (tmp_path / "table1.md").read_text(encoding="utf-8")
    updated = ("# Write-up — ünïcode\n\nBefore the table.\n<!-- table1:start -->\n" + md.strip()
               + "\n<!-- table1:end -->\n\nAfter the table — kept.\n")
    assert report_md.read_text(encoding="utf-8") == updated
    # the same table again: report.md is not rewritten
    os.utime(report_md, (1000, 1000))
    assert write_table1(table1([]), tmp_path) == [tmp_path / "table1.md", tmp_path / "table1.tex"]
    assert report_md.stat().st_mtime == 1000
    # another table, but the write-up is not to be touched
    run = load_run(fake_run(tmp_path / "runs" / "lr18", "light_resnet18", [0.5]))
    assert write_table1(table1([run]), tmp_path, update_write_up=False) == [tmp_path / "table1.md",
                                                                             tmp_path / "table1.tex"]
    assert report_md.stat().st_mtime == 1000 and "[lr18]" in (tmp_path / "table1.md").read_text(encoding="utf-8")
    # a write-up without the markers is left as it is
    report_md.write_text("# no markers\n", encoding="utf-8")
    assert len(write_table1(table1([run]), tmp_path)) == 2
    assert report_md.read_text(encoding="utf-8") == "# no markers\n"


def test_table_files_are_utf8_where_the_locale_is_cp1252(tmp_path, monkeypatch):
    """Windows' default cp1252 locale: "—" must still be written as UTF-8's E2 80 94 in all three files, and
    report.md's own non-ASCII text read as UTF-8 (pathlib asks io.text_encoding for the locale's encoding)."""
    real = io.text_encoding
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: real(encoding or "cp1252"))
    (tmp_path / "report.md").write_bytes(MARKED.encode("utf-8"))
    write_table1(table1([]), tmp_path)
    for name in ("table1.md", "table1.tex", "report.md"):
        data = (tmp_path / name).read_bytes()
        assert "—".encode("utf-8") in data, name
        data.decode("utf-8")
    text = (tmp_path / "report.md").read_bytes().decode("utf-8")
    assert text.startswith("# Write-up — ünïcode\n") and text.endswith("After the table — kept.\n")


# -------------------------------------------------------------------------------------------- log_comparison
def test_log_comparison_whole_table_by_hand(tmp_path):
    """Each row against its own model's log. LightResNet18_v2: |48.50 - 47.50| = |57.55 - 58.55| = 1 -> 1.00;
    |2.0015 - 2.0815| = 0.08, |1.9109 - 1.8909| = 0.02 -> 0.0500. LightResNet18 (hold-out log): 2.00 and 0.1000.
    RobustResNet64 epochs 301-302: none in its 300-epoch log. base=45: no log."""
    v2 = set_history(fake_run(tmp_path / "v2", "light_resnet18_v2", [0.485, 0.5755]), 1000,
                     train_loss=[2.0015, 1.9109])
    lr18 = set_history(fake_run(tmp_path / "lr18", "light_resnet18", [0.419, 0.4834]), 1000,
                       train_loss=[2.0250, 2.0533])
    b45 = fake_run(tmp_path / "b45", "light_resnet18_v2_b45", [0.4])
    late = set_history(fake_run(tmp_path / "late", "robust_resnet64", [0.9, 0.91], epochs=302), 1000,
                       epoch=[301, 302])
    got = log_comparison([load_run(p) for p in (b45, v2, lr18, late)])
    expected = pd.DataFrame(
        [["b45", "light_resnet18_v2_b45", 1, 0, "no original log", "no original log", "—"],
         ["v2", "light_resnet18_v2", 2, 2, "1.00", "0.0500", f"{V2_NOTEBOOK} (val = test batch)"],
         ["lr18", "light_resnet18", 2, 2, "2.00", "0.1000", f"{LR18_NOTEBOOK} (val = 5,000-image hold-out)"],
         ["late", "robust_resnet64", 2, 0, "—", "—", f"{R64_NOTEBOOK} (val = test batch)"]],
        columns=COMPARISON_COLUMNS)
    pd.testing.assert_frame_equal(got, expected)


def test_log_comparison_of_no_runs_keeps_its_columns():
    assert list(log_comparison([]).columns) == COMPARISON_COLUMNS


# -------------------------------------------------------------------------------------------- Table 1, Source
def test_rows_without_runs_have_no_source():
    assert list(table1([])["Source"]) == ["—"] * 4


def test_custom_architectures_grouped_by_architecture_whatever_the_json_key_order(tmp_path):
    """Two base-8 LightResNet18 runs, one config.json with its model_config keys in another order (JSON objects
    are unordered): one row, the newer shown. A base-16 RobustResNet64 that recorded 4,995,002 parameters: its own
    row, 4.995002 M -> "5.00"."""
    older = fake_run(tmp_path / "c8_old", "light_resnet18", [0.3], base_channels=8, kernel_size=5, written=1000)
    newer = fake_run(tmp_path / "c8_new", "light_resnet18", [0.35], base_channels=8, kernel_size=5, written=2000)
    config = json.loads((newer / "config.json").read_text())
    config["model_config"] = dict(reversed(list(config["model_config"].items())))
    (newer / "config.json").write_text(json.dumps(config))
    os.utime(newer / "history.csv", (2000, 2000))
    r64 = fake_run(tmp_path / "r64_16", "robust_resnet64", [0.4], base_channels=16,
                   extra={"parameters": 4_995_002})
    t = table1([load_run(older), load_run(r64), load_run(newer)])
    assert len(t) == 6
    assert t.iloc[4].to_dict() == {
        "Model": "LightResNet18 (custom: widths [8, 16, 32, 64], kernel_size 5)", "#Params (M)": "0.48", "N": "4",
        "B": "2 (per group)", "C": "8, 16, 32, 64", "Best Val Acc (%)": "no real run yet",
        "Final Val Acc (%)": "no real run yet", "Reported Val Acc (%)": "— (not in the report)",
        "Original log best (%)": "—",
        "Source": f"{H200}: best val 35.00%, final 35.00% — NOT a reproduction (1 of 300 epochs (1-epoch schedule); "
                  "widths 8,16,32,64; kernel_size 5) [c8_new] (newest of 2 runs given)"}
    custom = t.iloc[5]
    assert custom["Model"] == "RobustResNet64 (custom: widths [16, 32, 64])"
    assert (custom["#Params (M)"], custom["N"], custom["B"], custom["C"]) == ("5.00", "3", "10 (per group)",
                                                                              "16, 32, 64")
    assert (custom["Reported Val Acc (%)"], custom["Original log best (%)"]) == ("— (not in the report)", "—")
    assert custom["Source"].endswith("widths 16,32,64) [r64_16]")
    assert row(t, "RobustResNet64")["Source"] == "—" and row(t, "LightResNet18")["Source"] == "—"


def test_source_without_n_val_and_train_subset_as_recorded_or_as_configured(tmp_path):
    """Source says how many images the run recorded; an older config.json without the counts: the
    configured subset, no validation count."""
    recorded = load_run(fake_run(tmp_path / "sub", "light_resnet18", [0.5], train_size=505,
                                 extra={"n_train": 500}))
    assert source_line(recorded).startswith("CIFAR-10 (val = official test batch, 10000 images; train subset 500 "
                                            "images), paper profile")
    older = fake_run(tmp_path / "old", "light_resnet18", [0.5], train_size=505)
    config = json.loads((older / "config.json").read_text())
    del config["n_val"], config["n_train"]
    (older / "config.json").write_text(json.dumps(config))
    assert source_line(load_run(older)).startswith("CIFAR-10 (val = official test batch; train subset 505 images), "
                                                   "paper profile, NVIDIA H200, bf16 AMP: best val 50.00%")


def test_no_runs_for_the_figure_is_the_message_no_runs_given():
    with pytest.raises(UserError) as info:
        pick_figure_run([])
    assert str(info.value) == "no runs given"


# ------------------------------------------------------------------------------------------------- Figure 1
def solid_and_dashed(ax):
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    return solid, dashed


def visible_ticks(ax):
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_figure_of_20_epochs_marks_each_point_and_ticks_each_epoch(tmp_path):
    """Up to 20 points a line is drawn with markers (the log's unlike the run's), one x tick per epoch, half an
    epoch of margin; the log is cut at the 20-epoch schedule."""
    ax = plot_figure1(load_run(fake_run(tmp_path / "r20", "robust_resnet64", [0.5] * 20))).axes[0]
    solid, dashed = solid_and_dashed(ax)
    assert [line.get_marker() for line in solid] == ["o", "o"]
    assert len(dashed) == 2
    for line in dashed:
        assert line.get_marker() not in ("None", "o", None, "")
        assert list(line.get_xdata()) == list(range(1, 21))
    assert ax.get_xlim() == pytest.approx((0.5, 20.5))
    assert visible_ticks(ax) == list(range(1, 21))


def test_figure_of_21_epochs_has_plain_lines_and_whole_epoch_ticks(tmp_path):
    """Past 20 points no markers; the x axis runs 0..21 with fewer ticks than epochs, every one a whole epoch."""
    ax = plot_figure1(load_run(fake_run(tmp_path / "r21", "robust_resnet64", [0.5] * 21))).axes[0]
    solid, dashed = solid_and_dashed(ax)
    assert [line.get_marker() for line in solid + dashed] == ["None"] * 4
    assert [len(line.get_xdata()) for line in dashed] == [21, 21]
    assert ax.get_xlim() == pytest.approx((0, 21))
    ticks = visible_ticks(ax)
    assert 2 <= len(ticks) < 21 and all(t == int(t) for t in ticks)


def test_figure_log_lines_are_thinner_than_the_runs(tmp_path):
    """The original log is drawn in thin dashed lines under the run's solid ones (both colours)."""
    ax = plot_figure1(load_run(fake_run(tmp_path / "r3", "robust_resnet64", [0.4, 0.5, 0.6], epochs=300))).axes[0]
    solid, dashed = solid_and_dashed(ax)
    assert [line.get_color() for line in solid] == [line.get_color() for line in dashed] == ["green", "blue"]
    for own, logged in zip(solid, dashed):
        assert logged.get_linewidth() < own.get_linewidth()


def test_figure_subtitle_red_for_a_non_reproduction_black_for_a_reproduction(tmp_path):
    short = plot_figure1(load_run(fake_run(tmp_path / "r64_3", "robust_resnet64", [0.40, 0.55, 0.62], epochs=300)))
    title = short.axes[0].title
    assert " ".join(title.get_text().split()) == (
        f"NOT a reproduction (3 of 300 epochs) — RobustResNet64: {H200} [r64_3]")  # no numbers: not a result
    assert to_rgba(title.get_color()) == (1.0, 0.0, 0.0, 1.0)
    full = plot_figure1(load_run(fake_run(tmp_path / "r64", "robust_resnet64", [0.5] * 299 + [0.9])))
    title = full.axes[0].title
    assert " ".join(title.get_text().split()) == f"RobustResNet64: {H200}, 300 epochs [r64]"
    assert to_rgba(title.get_color()) == (0.0, 0.0, 0.0, 1.0)


def test_figure_legend_sits_below_the_axes_and_names_the_log(tmp_path):
    """Inside the axes the legend would hide a short run's curves: it is drawn entirely below them."""
    fig = plot_figure1(load_run(fake_run(tmp_path / "lr18", "light_resnet18", [0.4, 0.5])))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, = fig.legends
    assert legend.get_window_extent(renderer).y1 <= fig.axes[0].get_window_extent(renderer).y0
    assert legend.get_title().get_text() == f"dashed: AlperMumcular/DL-Project1 @ 0a11187, {LR18_NOTEBOOK}"
