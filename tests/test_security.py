"""Untrusted files run no code: crafted checkpoints, CIFAR batches and Kaggle pickles are refused with one line
naming the file, and the marker file their payload would create never appears.

Every payload is first shown to work (a plain unpickler or ``torch.load(weights_only=False)`` does create the
marker), so a passing test means the loader refused it, not that the payload was harmless.
"""
import os
import pathlib
import pickle
import shutil

import numpy as np
import pytest
import torch

import lib.predict
import lib.train
from lib.checkpoint import load_model, read_checkpoint
from lib.common import UserError, run_cli
from lib.data import load_cifar10, load_kaggle_test
from lib.sources.pickles import restricted_load
from lib.models import build_model


class Touch:
    """Creates ``marker`` when unpickled, through pathlib (no shell)."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class Shell:
    """Creates ``marker`` when unpickled, through os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class NumpyLoad:
    """Only numpy globals: ``numpy.load(inner, None, allow_pickle=True)`` unpickles ``inner`` with no restriction.
    A loader that admits every numpy name (rather than the array constructors) runs whatever ``inner`` holds."""

    def __init__(self, inner):
        self.inner = str(inner)

    def __reduce__(self):
        return np.load, (self.inner, None, True)


def _numpy_load_payload(tmp_path, marker, wrap=lambda p: p):
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(pickle.dumps(Touch(marker), protocol=2))
    return wrap(NumpyLoad(inner))


def _control(path, marker, loader=pickle.load):
    """The payload in ``path`` does create ``marker`` under an unrestricted loader (then the marker is removed)."""
    assert not marker.exists()
    with open(path, "rb") as f:
        try:
            loader(f)
        except Exception:  # noqa: BLE001 - the payload's return value may not satisfy the caller; it ran already
            pass
    assert marker.exists(), "the payload must be live, or the refusal tests prove nothing"
    marker.unlink()


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture()
def evil_checkpoint(tmp_path):
    """A torch.save'd checkpoint dict (every required key) with a payload among the model weights."""
    marker = tmp_path / "ckpt_ran"
    model = build_model("light_resnet18", base_channels=8)
    ckpt = {"format": 2, "config": {}, "model_config": model.config, "epoch": 1,
            "model": {**model.state_dict(), "evil": Touch(marker)},
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    _control(path, marker, lambda f: torch.load(f, weights_only=False))
    return path, marker


def test_checkpoint_reader_runs_no_code(evil_checkpoint):
    path, marker = evil_checkpoint
    for load in (read_checkpoint, load_model, lib.predict.load_checkpoint,
                 lambda p: lib.predict.load_checkpoint(p.parent)):  # a run folder: its best.pt
        with pytest.raises(UserError) as err:
            load(path)
        assert str(err.value).startswith(f"{path}: not a readable PyTorch checkpoint")
        assert "\n" not in str(err.value) and not marker.exists()


def test_predict_and_resume_refuse_a_code_checkpoint(evil_checkpoint, smoke_root, tmp_path, capsys):
    path, marker = evil_checkpoint
    code = run_cli(lib.predict.main, ["--checkpoint", str(path), "--test-file",
                                      str(smoke_root / "kaggle_test.pkl"), "--out", str(tmp_path / "sub.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {path}") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "sub.csv").exists()

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "last.pt")
    code = run_cli(lib.train.main, ["--profile", "smoke", "--data-dir", str(smoke_root), "--out", str(run),
                                    "--resume", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(run / "last.pt") in err and not marker.exists()


# ----------------------------------------------------------------------------------- CIFAR and Kaggle pickles
@pytest.mark.parametrize("payload", ["shell", "touch", "numpy_load"])
def test_kaggle_pickle_runs_no_code(tmp_path, payload):
    marker = tmp_path / f"{payload}_ran"
    obj = {"shell": lambda: Shell(marker), "touch": lambda: Touch(marker),
           "numpy_load": lambda: _numpy_load_payload(tmp_path, marker)}[payload]()
    evil = tmp_path / "kaggle.pkl"
    evil.write_bytes(pickle.dumps({"data": obj, "ids": [1]}, protocol=2))
    _control(evil, marker)
    with pytest.raises(UserError, match="refusing to unpickle") as err:
        load_kaggle_test(evil)
    assert str(err.value).startswith(f"{evil}: ") and not marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batch_with_numpy_load_runs_no_code(smoke_root, tmp_path, protocol):
    """numpy.load is a numpy global, but not an array constructor: refused in a training batch too."""
    marker = tmp_path / "batch_ran"
    root = tmp_path / "copy"
    shutil.copytree(smoke_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": _numpy_load_payload(tmp_path, marker), b"labels": [0]},
                                   protocol=protocol))
    _control(batch, marker)
    with pytest.raises(UserError, match=r"data_batch_3: refusing to unpickle numpy\.load"):
        load_cifar10(root)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("numpy", "load"), ("numpy.lib.npyio", "load"), ("numpy", "fromfile"),
                                         ("numpy.testing", "rundocs"), ("numpy", "frombuffer"),
                                         ("numpy.core.multiarray", "fromfile"), ("numpy._core.numeric", "load"),
                                         ("builtins", "eval"), ("builtins", "getattr"), ("os", "system"),
                                         ("_codecs", "decode"), ("torch", "load"), ("pickle", "loads")])
def test_only_array_constructors_and_containers_are_admitted(tmp_path, module, name):
    """A hand-written GLOBAL opcode per name (whether or not the name exists): every one is refused by name."""
    path = tmp_path / "g.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b".")
    with pytest.raises(UserError, match=f"refusing to unpickle {module}.{name} "):
        restricted_load(path)


@pytest.mark.parametrize("encoding", ["rot13", "utf-16", "base64", "hex", "zlib", "LATIN1 "])
def test_codecs_encode_is_latin1_only(tmp_path, encoding):
    """_codecs.encode is admitted for protocol-2 bytes; any other codec would turn the pickle into a decoder."""
    evil = tmp_path / "codec.pkl"
    enc = encoding.encode()
    evil.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00x" + b"X" + len(enc).to_bytes(4, "little")
                     + enc + b"\x86R.")
    with pytest.raises(UserError, match="not a readable pickle"):
        restricted_load(evil)


def test_codecs_encode_of_a_non_string_is_refused(tmp_path):
    evil = tmp_path / "codec.pkl"
    evil.write_bytes(b"\x80\x02c_codecs\nencode\nK\x05X\x06\x00\x00\x00latin1\x86R.")  # encode(5, "latin1")
    with pytest.raises(UserError, match="not a readable pickle"):
        restricted_load(evil)


def test_latin1_bytes_both_spellings(tmp_path):
    for spelling in (b"latin1", b"latin-1"):
        ok = tmp_path / "ok.pkl"
        ok.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbf" + b"X"
                       + len(spelling).to_bytes(4, "little") + spelling + b"\x86R.")
        assert restricted_load(ok) == b"\xff"


def test_codecs_encode_with_one_argument_is_latin1(tmp_path):
    """``_codecs.encode(text)`` (no codec named) gives the latin-1 bytes, not utf-8."""
    path = tmp_path / "one.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbf\x85R.")  # encode("\xff")
    assert restricted_load(path) == b"\xff"


def test_checkpoint_refused_even_where_torch_load_defaults_to_full_unpickling(evil_checkpoint, monkeypatch):
    """torch < 2.6 (requirements allow 2.3) unpickles anything unless weights_only=True is passed; the variable
    gives this torch the same default, so only an explicit weights_only=True keeps the payload from running."""
    path, marker = evil_checkpoint
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()
