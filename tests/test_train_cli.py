"""``python -m lib.train`` in this process: what its help, its last line and its failure lines say, and when it
shows progress bars. ``lib.train.train`` is replaced by a stand-in that returns or raises what a run would, so no
training happens; the texts expected are written out by hand, as a user reads them."""
import sys
import types

import pytest
import torch

import lib.train as train_mod
from lib.common import UserError
from lib.config import make_config
from lib.guard.stopping import DivergedError
from lib.guard.writes import WriteFailedError
from lib.train import _show_progress, main, parse_args

ARGS = ["--profile", "smoke", "--model", "light_resnet18", "--epochs", "2"]


@pytest.fixture
def fake_train(monkeypatch):
    """lib.train.train replaced: records the config it gets, then returns ``result`` or raises it."""
    calls = []

    def install(result):
        def fake(cfg, on_epoch=None):
            calls.append(cfg)
            if isinstance(result, BaseException):
                raise result
            return result
        monkeypatch.setattr(train_mod, "train", fake)
        return calls
    return install


def test_help_names_the_command_and_what_it_does(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lib.train ")
    # the module docstring's first paragraph, not its examples
    said = " ".join(out.split())  # argparse rewraps the description
    assert "One training run: the recipe's pieces (lib.recipe) in a loop over epochs" in said
    assert "RUN_DIR receives config.json" not in said  # the docstring's later paragraphs stay out


def test_the_profile_defaults_to_the_papers():
    assert parse_args([]).profile == "paper" and parse_args([]).epochs == 300  # the report's 300 epochs
    smoke = parse_args(["--profile", "smoke", "--epochs", "2"])
    assert smoke.profile == "smoke" and smoke.epochs == 2


@pytest.mark.parametrize("done, words", [(1, "after 1 epoch;"), (2, "after 2 epochs;")])
def test_a_finished_run_ends_with_its_best_accuracy_and_folder(fake_train, capsys, done, words):
    calls = fake_train({"run_dir": "runs/r18", "best_val_acc": 0.8125, "epochs_done": done, "history": []})
    assert main(ARGS) == 0
    assert capsys.readouterr().out == f"best val accuracy 81.25% {words} run folder runs/r18\n"
    assert calls[0] == make_config("smoke", model="light_resnet18", epochs=2)


def test_without_arguments_it_reads_the_command_line(fake_train, monkeypatch, capsys):
    calls = fake_train({"run_dir": "r", "best_val_acc": 0.5, "epochs_done": 2, "history": []})
    monkeypatch.setattr(sys, "argv", ["lib/train.py", *ARGS])
    assert main() == 0
    assert calls[0].profile == "smoke" and calls[0].epochs == 2


def test_a_diverged_run_is_one_error_line_and_exit_code_1(fake_train, capsys):
    fake_train(DivergedError("loss is nan at epoch 2, step 5; runs/x/last.pt holds epoch 1"))
    assert main(ARGS) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: loss is nan at epoch 2, step 5; runs/x/last.pt holds epoch 1\n"
    assert captured.out == ""


@pytest.mark.parametrize("argv, complete, command", [
    (ARGS, 3, "python -m lib.train --profile smoke --model light_resnet18 --epochs 2 --resume"),
    ([*ARGS, "--resume"], 3, "python -m lib.train --profile smoke --model light_resnet18 --epochs 2 --resume"),
    (ARGS, 0, "python -m lib.train --profile smoke --model light_resnet18 --epochs 2"),  # nothing to resume
])
def test_a_failed_write_names_the_command_that_continues(fake_train, argv, complete, command):
    fake_train(WriteFailedError("runs/x/last.pt: No space left on device", complete))
    with pytest.raises(WriteFailedError) as exc:
        main(argv)
    assert exc.value.command == command
    assert str(exc.value).endswith(f"make room and run {command}")


@pytest.mark.parametrize("argv", [ARGS, [*ARGS, "--resume"]])
def test_ctrl_c_says_how_to_continue_and_is_raised_again(fake_train, capsys, argv):
    fake_train(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert capsys.readouterr().err == (
        "continue with: python -m lib.train --profile smoke --model light_resnet18 --epochs 2 --resume\n")


# ---------------------------------------------------------------------------------------------- progress bars
class ZMQInteractiveShell:  # ipykernel's shell, by name (what a Jupyter notebook runs)
    pass


class ColabShell(ZMQInteractiveShell):  # Colab's google.colab._shell.Shell derives from it
    pass


class TerminalInteractiveShell:  # IPython in a terminal
    pass


class NotATerminal:
    def isatty(self):
        return False

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class ATerminal(NotATerminal):
    def isatty(self):
        return True


@pytest.mark.parametrize("shell, terminal, progress, shown", [
    (None, False, True, False),                       # a log file: one line an epoch
    (None, True, True, True),                         # a terminal
    (ZMQInteractiveShell(), False, True, True),       # Jupyter
    (ColabShell(), False, True, True),                # Colab
    (TerminalInteractiveShell(), False, True, False),  # IPython writing to a log
    (ColabShell(), True, False, False),               # --no-progress wins
])
def test_bars_in_a_terminal_or_notebook_only(monkeypatch, shell, terminal, progress, shown):
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setattr(sys, "stderr", ATerminal() if terminal else NotATerminal())
    assert _show_progress(make_config("smoke", progress=progress)) is shown


def test_no_ipython_loaded_means_no_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", NotATerminal())
    assert _show_progress(make_config("smoke", progress=True)) is False


# ---------------------------------------------------------------------------------------- refused before any file
def test_cuda_graphs_need_a_cuda_device_and_one_process(tmp_path, monkeypatch):
    from lib.scale.distributed import Context

    run = tmp_path / "run"
    cfg = make_config("smoke", compile=True, cuda_graphs=True, device="cpu", out=str(run))
    with pytest.raises(UserError) as exc:
        train_mod.train(cfg)
    assert str(exc.value) == "--cuda-graphs: needs a CUDA device (this run is on cpu)"
    # on a CUDA device under torchrun (two processes): the same graphs cannot hold DDP's all-reduce
    monkeypatch.setattr(train_mod, "resolve_device", lambda name: torch.device("cuda"))
    closed = []
    monkeypatch.setattr(train_mod.distributed, "setup", lambda device, sync_bn: type(
        "TwoProcesses", (Context,), {"close": lambda self: closed.append(True)})(world_size=2, active=True))
    with pytest.raises(UserError) as exc:
        train_mod.train(cfg)
    assert str(exc.value) == "--cuda-graphs: one process only (not under torchrun)" and closed == [True]
    assert not run.exists()  # settings are checked before any file is written
