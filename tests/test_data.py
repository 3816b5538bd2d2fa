"""lib.data: the official CIFAR-10 layout, splits, the Kaggle pickle, safe unpickling, smoke data, statistics."""
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from lib.common import UserError
from lib.data import (TRAIN_BATCHES, balanced_subset, channel_stats, find_cifar_dir, load_cifar10,
                      load_kaggle_test, load_splits, stratified_holdout)
from lib.sources.official import BATCH_DIR
from lib.sources.pickles import restricted_load
from lib.sources.synthetic import ensure_smoke_data, write_smoke_dataset


# batches.meta's label_names in the official release, in label order
OFFICIAL_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def copy_batches(smoke_root, dest, skip=()):
    """A writable copy of the smoke batches folder (the session fixture is shared and read-only)."""
    out = dest / BATCH_DIR
    shutil.copytree(smoke_root / BATCH_DIR, out, ignore=lambda *_: list(skip))
    return out


def counts(y):
    return np.bincount(y, minlength=10)


# ---------------------------------------------------------------------------------------------------- layout
def test_smoke_data_loads_from_both_dir_forms(smoke_root):
    a = load_cifar10(smoke_root)
    b = load_cifar10(smoke_root / BATCH_DIR)  # DATA_DIR may be the batches folder itself
    assert a.root == b.root == smoke_root / BATCH_DIR == find_cifar_dir(smoke_root)
    assert a.train_x.shape == (1000, 32, 32, 3) and a.train_x.dtype == np.uint8
    assert a.train_y.shape == (1000,) and a.train_y.dtype == np.int64
    assert a.test_x.shape == (500, 32, 32, 3) and a.test_y.dtype == np.int64
    assert (counts(a.train_y) == 100).all() and (counts(a.test_y) == 50).all()
    assert a.label_names == OFFICIAL_CLASSES
    assert a.source == b.source == "synthetic"
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)


def test_smoke_files_are_python2_style_pickles_in_the_official_row_layout(smoke_root):
    """Byte keys under encoding="bytes"; rows are the R, G, B planes, each row-major."""
    with open(smoke_root / BATCH_DIR / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"data", b"labels", b"batch_label", b"filenames"}
    rows = raw[b"data"]
    assert rows.dtype == np.uint8 and rows.shape == (200, 3072)
    with open(smoke_root / BATCH_DIR / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta[b"label_names"][0] == b"airplane" and meta[b"synthetic"]

    x = load_cifar10(smoke_root).train_x[200:400]
    i, h, w, c = 7, 3, 29, 2
    assert x[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(x.transpose(0, 3, 1, 2).reshape(200, 3072), rows)
    assert list(load_cifar10(smoke_root).train_y[200:400]) == raw[b"labels"]


def test_str_keys_load_like_byte_keys(smoke_root, tmp_path):
    out = tmp_path / BATCH_DIR
    out.mkdir()
    for f in (smoke_root / BATCH_DIR).iterdir():  # re-save as Python 3 pickles with str keys
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        with open(out / f.name, "wb") as fh:
            pickle.dump({k.decode(): v for k, v in d.items()}, fh)
    a, b = load_cifar10(smoke_root), load_cifar10(tmp_path)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert b.source == "synthetic" and b.label_names == a.label_names


# The official release's exact file format, written here (so the test needs
# nothing outside the repository): Python 2 pickles with str keys, numpy.core.multiarray._reconstruct arrays.
class Py2Str(bytes):
    pass


def _py2(value) -> bytes:
    if isinstance(value, Py2Str):
        return (b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<i", len(value))) + value
    if isinstance(value, list):
        return b"](" + b"".join(_py2(v) for v in value) + b"e"
    if isinstance(value, int):
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)
    shape = b"(" + b"".join(_py2(int(n)) for n in value.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2(Py2Str(b"u1")) + b"K\x00K\x01\x87R"
             b"(K\x03" + _py2(Py2Str(b"|")) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" b"cnumpy\nndarray\n" b"K\x00\x85" + _py2(Py2Str(b"b"))
            + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + _py2(Py2Str(value.tobytes())) + b"tb")


def dump_py2_dict(d, path):
    path.write_bytes(b"\x80\x02}(" + b"".join(_py2(Py2Str(k.encode())) + _py2(v) for k, v in d.items()) + b"u.")


def test_official_python2_format_loads(tmp_path):
    out = tmp_path / BATCH_DIR
    out.mkdir()
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (5, 20, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, (5, 20))
    for i, name in enumerate(TRAIN_BATCHES):
        dump_py2_dict({"batch_label": Py2Str(b"training batch"), "labels": [int(v) for v in labels[i]],
                       "data": rows[i], "filenames": [Py2Str(b"a.png")] * 20}, out / name)
    dump_py2_dict({"num_cases_per_batch": 20, "label_names": [Py2Str(c.encode()) for c in OFFICIAL_CLASSES],
                   "num_vis": 3072}, out / "batches.meta")
    assert b"cnumpy.core.multiarray\n_reconstruct" in (out / "data_batch_1").read_bytes()

    d = load_cifar10(tmp_path)
    np.testing.assert_array_equal(d.train_x, rows.reshape(100, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(d.train_y, labels.reshape(-1))
    assert d.test_x is None and d.source == "cifar10" and d.label_names == OFFICIAL_CLASSES


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update({b"labels": [10] * 200}), "labels span 10..10; expected 0..9"),
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "labels for 200 images"),
    (lambda d: d.update({b"data": d[b"data"].reshape(200, 3, 32, 32)}), "expected N x 3072"),
    (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "dtype float32"),
    (lambda d: d.pop(b"labels"), "no 'labels' entry"),
])
def test_bad_batch_is_a_user_error_naming_the_file(smoke_root, tmp_path, change, needle):
    out = copy_batches(smoke_root, tmp_path)
    with open(out / "data_batch_3", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    change(d)
    with open(out / "data_batch_3", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(UserError, match=needle) as err:
        load_cifar10(tmp_path)
    assert str(out / "data_batch_3") in str(err.value)


# ------------------------------------------------------------------------------------------- missing files
def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_cifar10(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / BATCH_DIR) in msg and str(tmp_path / "nowhere") in msg
    assert "--download" in msg and "cifar-10-python.tar.gz" in msg and "shared" not in msg


def test_partial_copy_names_the_missing_batch(smoke_root, tmp_path):
    copy_batches(smoke_root, tmp_path, skip=["data_batch_3"])
    with pytest.raises(UserError, match="missing data_batch_3"):
        load_cifar10(tmp_path)


def test_missing_test_batch_suggests_holdout(smoke_root, tmp_path):
    out = copy_batches(smoke_root, tmp_path, skip=["test_batch"])
    with pytest.raises(UserError, match="--val-source holdout") as err:
        load_splits(tmp_path, val_source="test")
    assert str(out / "test_batch") in str(err.value)
    assert load_splits(tmp_path, val_source="holdout").val_x.shape == (100, 32, 32, 3)


def test_ensure_smoke_data_generates_only_when_nothing_is_there(smoke_root, tmp_path, capsys):
    assert ensure_smoke_data(tmp_path / "smoke") is True
    assert "synthetic" in capsys.readouterr().err
    assert load_cifar10(tmp_path / "smoke").source == "synthetic"
    assert (tmp_path / "smoke" / "kaggle_test.pkl").is_file()
    assert ensure_smoke_data(tmp_path / "smoke") is False
    copy_batches(smoke_root, tmp_path / "partial", skip=["data_batch_1"])
    assert ensure_smoke_data(tmp_path / "partial") is False  # a partial real copy is never overwritten
    assert not (tmp_path / "partial" / BATCH_DIR / "data_batch_1").exists()


def test_smoke_generation_is_seeded(tmp_path):
    a = write_smoke_dataset(tmp_path / "a", per_batch=30, test_count=20, kaggle_count=10, seed=5)
    b = write_smoke_dataset(tmp_path / "b", per_batch=30, test_count=20, kaggle_count=10, seed=5)
    c = write_smoke_dataset(tmp_path / "c", per_batch=30, test_count=20, kaggle_count=10, seed=6)
    assert (a / "data_batch_4").read_bytes() == (b / "data_batch_4").read_bytes()
    assert not np.array_equal(load_cifar10(a).train_x, load_cifar10(c).train_x)


# ---------------------------------------------------------------------------------------------------- splits
def test_holdout_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
    train, val = stratified_holdout(labels, 0.1, seed=3)
    assert (counts(labels[val]) == 5).all() and (counts(labels[train]) == 45).all()
    assert not set(train) & set(val) and len(train) + len(val) == 500
    again, val_again = stratified_holdout(labels, 0.1, seed=3)
    np.testing.assert_array_equal(val, val_again)
    assert not np.array_equal(val, stratified_holdout(labels, 0.1, seed=4)[1])
    uneven = np.array([0] * 7 + [1] * 13)
    assert counts(uneven[stratified_holdout(uneven, 0.3)[1]])[:2].tolist() == [2, 4]  # round(2.1), round(3.9)


def test_holdout_splits_from_the_training_batches(smoke_root):
    full = load_cifar10(smoke_root)
    s = load_splits(smoke_root, val_source="holdout", holdout_fraction=0.2, seed=1)
    assert (counts(s.val_y) == 20).all() and (counts(s.train_y) == 80).all()
    rows = {x.tobytes() for x in full.train_x}
    assert all(x.tobytes() in rows for x in s.val_x)
    assert not {x.tobytes() for x in s.val_x} & {x.tobytes() for x in s.train_x}
    np.testing.assert_array_equal(s.val_x, load_splits(smoke_root, val_source="holdout", holdout_fraction=0.2,
                                                       seed=1).val_x)
    assert s.source == "synthetic"
    assert s.description.startswith(f"synthetic smoke data at {smoke_root / BATCH_DIR}")
    assert "20% hold-out" in s.description and "seed 1" in s.description and "800" in s.description


def test_default_validation_is_the_test_batch(smoke_root):
    s = load_splits(smoke_root)
    full = load_cifar10(smoke_root)
    np.testing.assert_array_equal(s.val_x, full.test_x)
    np.testing.assert_array_equal(s.train_y, full.train_y)
    assert "official test batch, 500" in s.description and "train 1000" in s.description


def test_subsets_are_class_balanced_and_seeded(smoke_root):
    s = load_splits(smoke_root, train_size=95, val_size=50, seed=2)
    assert len(s.train_y) == 95 and set(counts(s.train_y)) == {9, 10}
    assert (counts(s.val_y) == 5).all()
    again = load_splits(smoke_root, train_size=95, val_size=50, seed=2)
    np.testing.assert_array_equal(s.train_x, again.train_x)
    np.testing.assert_array_equal(s.val_x, again.val_x)
    other = load_splits(smoke_root, train_size=95, val_size=50, seed=3)
    assert not np.array_equal(s.train_x, other.train_x)
    assert "95 (class-balanced subset of 1000, seed 2)" in s.description


def test_subset_larger_than_available_is_a_user_error(smoke_root):
    with pytest.raises(UserError, match="--train-size 1001"):
        load_splits(smoke_root, train_size=1001)
    with pytest.raises(UserError, match="--val-size 201: 201 requested but only 200 images"):
        load_splits(smoke_root, val_source="holdout", holdout_fraction=0.2, val_size=201)
    with pytest.raises(ValueError, match="class 1 has 1 images, 2 needed"):
        balanced_subset(np.array([0, 0, 0, 1]), 4, num_classes=2)


# ---------------------------------------------------------------------------------------------------- Kaggle
def test_both_kaggle_layouts_load_identically(smoke_root):
    x_rows, ids_rows = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    x_hwc, ids_hwc = load_kaggle_test(smoke_root / "kaggle_test_hwc.pkl")
    assert x_rows.shape == (200, 32, 32, 3) and x_rows.dtype == np.uint8
    np.testing.assert_array_equal(x_rows, x_hwc)
    np.testing.assert_array_equal(ids_rows, ids_hwc)
    assert ids_rows.dtype == np.int64 and sorted(ids_rows) == list(range(200)) and list(ids_rows) != sorted(ids_rows)
    with open(smoke_root / "kaggle_test.pkl", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) == {b"data", b"ids"} and raw[b"data"].shape == (200, 3072)


def write_pickle(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def good_kaggle(n=4):
    rng = np.random.default_rng(0)
    return {"data": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "ids": np.arange(10, 10 + n)}


@pytest.mark.parametrize("obj, needle", [
    ({**good_kaggle(), "data": np.zeros((4, 3000), np.uint8)}, "shape 4 x 3000; expected N x 3072"),
    ({**good_kaggle(), "data": np.zeros((4, 3, 32, 32), np.uint8)}, "shape 4 x 3 x 32 x 32"),
    ({**good_kaggle(), "data": np.zeros((0, 3072), np.uint8), "ids": []}, "no images"),
    ({**good_kaggle(), "ids": np.arange(3)}, "3 ids for 4 images"),
    ({**good_kaggle(), "ids": [1, 2, 2, 3]}, "duplicate ids, e.g. 2"),
    ({**good_kaggle(), "data": np.full((4, 3072), 256, np.int64)}, "pixel values span 256..256"),
    ({**good_kaggle(), "data": np.full((4, 3072), -1, np.int16)}, "pixel values span -1..-1"),
    ({**good_kaggle(), "data": np.zeros((4, 3072), np.float32)}, "dtype float32"),
    ({**good_kaggle(), "ids": np.zeros((4, 2))}, "ids must be a flat list"),
    ({"data": good_kaggle()["data"]}, "no 'ids' entry"),
    ({b"ids": np.arange(4)}, "no 'data' entry"),
    ([good_kaggle()["data"]], "expected a dict"),
])
def test_bad_kaggle_pickle_is_a_user_error_naming_the_file(tmp_path, obj, needle):
    path = write_pickle(tmp_path / "bad.pkl", obj)
    with pytest.raises(UserError, match=needle) as err:
        load_kaggle_test(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("content, needle", [
    (b"", "truncated"),
    (b"this is not a pickle", "not a readable pickle"),
    (pickle.dumps(good_kaggle())[:-100], "truncated"),
])
def test_unreadable_kaggle_file_is_a_user_error(tmp_path, content, needle):
    path = tmp_path / "broken.pkl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=needle) as err:
        load_kaggle_test(path)
    assert str(err.value).startswith(str(path))
    with pytest.raises(UserError, match="no such file"):
        load_kaggle_test(tmp_path / "absent.pkl")


def test_kaggle_accepts_what_is_unambiguous(tmp_path):
    """Integer pixels within 0..255, byte keys, list or string ids, any pickle protocol."""
    good = good_kaggle()
    for protocol in (2, 3, 4, 5):
        path = write_pickle(tmp_path / f"p{protocol}.pkl", {b"data": good["data"].astype(np.int64),
                                                           b"ids": good["ids"].tolist()}, protocol)
        x, ids = load_kaggle_test(path)
        np.testing.assert_array_equal(x, good["data"])
        assert x.dtype == np.uint8 and ids.tolist() == [10, 11, 12, 13]
    x, ids = load_kaggle_test(write_pickle(tmp_path / "s.pkl", {**good, "ids": ["a", "b", "c", "d"]}))
    assert ids.tolist() == ["a", "b", "c", "d"]


# ---------------------------------------------------------------------------------------- restricted unpickling
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_runs_nothing_and_names_the_file(smoke_root, tmp_path):
    marker = tmp_path / "pwned"
    evil = write_pickle(tmp_path / "evil.pkl", {"data": Payload(marker), "ids": [1]}, protocol=2)
    with pytest.raises(UserError, match="refusing to unpickle (posix|nt|os).system — only numpy arrays and plain "
                                        "containers are allowed") as err:
        load_kaggle_test(evil)
    assert str(err.value).startswith(str(evil)) and not marker.exists()

    out = copy_batches(smoke_root, tmp_path)  # the same inside a CIFAR batch
    write_pickle(out / "data_batch_2", {b"data": Payload(marker)})
    with pytest.raises(UserError, match="data_batch_2: refusing to unpickle"):
        load_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [eval, getattr, shutil.rmtree, torch.zeros])
def test_any_other_global_is_refused(tmp_path, obj):
    path = write_pickle(tmp_path / "g.pkl", {"x": obj})
    with pytest.raises(UserError, match="refusing to unpickle"):
        restricted_load(path)


def test_codecs_encode_only_as_plain_bytes(tmp_path):
    ok = write_pickle(tmp_path / "ok.pkl", b"\x00\xff", protocol=2)  # Python 3 spells bytes as _codecs.encode
    assert restricted_load(ok) == b"\x00\xff"
    evil = tmp_path / "codec.pkl"
    evil.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UserError, match="not a readable pickle.*rot13"):
        restricted_load(evil)


def test_plain_containers_and_numpy_values_round_trip(tmp_path):
    obj = {"a": [1, 2.5, "s", b"b", b""], "t": (1, None, True), "set": {1, 2}, "f": frozenset({3}), "c": 1 + 2j,
           "ba": bytearray(b"xy"), "arr": np.arange(6, dtype=np.int64).reshape(2, 3), "s": np.float32(1.5),
           "u8": np.arange(3, dtype=np.uint8)}
    for protocol in (2, 4, 5):
        back = restricted_load(write_pickle(tmp_path / "c.pkl", obj, protocol))
        assert back.keys() == obj.keys() and back["a"] == obj["a"] and back["set"] == {1, 2}
        np.testing.assert_array_equal(back["arr"], obj["arr"])
        assert back["s"] == np.float32(1.5) and back["ba"] == bytearray(b"xy")


# ---------------------------------------------------------------------------------------------- statistics
def test_channel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    x[..., 2] //= 3  # channels differ
    ref = x.reshape(-1, 3).astype(np.float64) / 255
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-12)
    assert channel_stats(x, chunk=7) == (mean, std)  # chunking changes nothing: exact integer histograms
    assert isinstance(mean, tuple) and isinstance(mean[0], float) and len(std) == 3
    with pytest.raises(ValueError):
        channel_stats(x.astype(np.float32))


# -------------------------------------------------------------------------------------------- learnability
def test_smoke_data_is_learnable(smoke_root):
    """A tiny CNN beats chance (10%) clearly within 60 SGD steps: the smoke profile can show learning."""
    torch.manual_seed(0)
    d = load_cifar10(smoke_root)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in channel_stats(d.train_x))

    def prep(x):
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std

    x, y, xt, yt = prep(d.train_x), torch.from_numpy(d.train_y), prep(d.test_x), torch.from_numpy(d.test_y)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(60):
        idx = torch.randint(0, len(y), (32,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (net.eval()(xt).argmax(1) == yt).float().mean().item()
    print(f"smoke test-batch accuracy after 60 steps: {acc:.3f}")
    assert acc > 0.5, acc


def test_the_holdout_of_a_seed_is_the_same_in_every_version():
    """--resume and `lib.predict --evaluate` rebuild a run's hold-out from (fraction, seed): the indices are pinned
    (this version's own draw), so that another version cannot validate a run on other images unnoticed."""
    labels = np.arange(100) % 10
    assert stratified_holdout(labels, 0.1, seed=0)[1].tolist() == [14, 21, 27, 40, 43, 45, 52, 66, 68, 69]
    assert stratified_holdout(labels, 0.1)[1].tolist() == stratified_holdout(labels, 0.1, seed=0)[1].tolist()
    assert stratified_holdout(labels, 0.2, seed=7)[1].tolist() == [12, 13, 26, 29, 30, 32, 41, 44, 45, 49, 63, 70,
                                                                   76, 78, 85, 87, 88, 91, 94, 97]


def test_a_holdout_that_rounds_to_nothing_is_refused():
    """0.01 of 2 images per class rounds to 0 held out: an empty validation split, refused with the numbers."""
    with pytest.raises(ValueError, match=r"holdout fraction 0.01 of 20 images leaves an empty split"):
        stratified_holdout(np.arange(20) % 10, 0.01)


def test_the_subsets_and_holdout_a_run_trains_and_validates_on_are_pinned(smoke_root):
    """A run's subsets and hold-out are rebuilt from (sizes, fraction, seed) by --resume and `lib.predict --evaluate`:
    their labels, in order, on the session's smoke data are pinned (this version's draws), the train and the
    validation subset from their own streams. Leaving out the seed means seed 0, a run's default."""
    s = load_splits(smoke_root, train_size=20, val_size=10, seed=4)
    assert s.train_y.tolist() == [9, 6, 4, 6, 5, 8, 4, 7, 0, 3, 5, 2, 0, 1, 2, 9, 8, 7, 1, 3]
    assert s.val_y.tolist() == [4, 8, 5, 6, 1, 2, 3, 9, 0, 7]
    held = load_splits(smoke_root, val_source="holdout", seed=3)
    assert held.val_y[:30].tolist() == [8, 2, 2, 6, 3, 0, 5, 4, 8, 8, 0, 4, 7, 7, 5, 1, 8, 3, 5, 2, 2, 8, 1, 3, 6, 7,
                                        4, 9, 6, 5]
    assert "(seed 0)" in load_splits(smoke_root, val_source="holdout").description
    labels = np.arange(100) % 10
    assert balanced_subset(labels, 15).tolist() == balanced_subset(labels, 15, seed=0).tolist()
    assert len(balanced_subset(labels, 1)) == 1  # one image is a subset too


def test_split_settings_that_cannot_work_are_named(smoke_root, tmp_path):
    with pytest.raises(UserError, match=r"^--val-source 'train': expected test or holdout$"):
        load_splits(smoke_root, val_source="train")
    with pytest.raises(UserError, match=r"^--holdout-fraction 0.001: holdout fraction 0.001 of 1000 images leaves an"):
        load_splits(smoke_root, val_source="holdout", holdout_fraction=0.001)  # 100 per class: round(0.1) = 0
    with pytest.raises(UserError, match=r"no CIFAR-10 found"):  # nothing is downloaded unless asked
        load_splits(tmp_path / "empty")
    copy_batches(smoke_root, tmp_path / "no_test", skip=["test_batch"])
    with pytest.raises(UserError, match=r"use --val-source holdout to validate on a stratified hold-out of the "
                                        r"training batches$"):
        load_splits(tmp_path / "no_test")


@pytest.mark.parametrize("shape", [(2, 32, 32, 4), (32, 32, 3), (0, 32, 32, 3)])
def test_channel_stats_refuse_what_is_not_a_batch_of_rgb_images(shape):
    with pytest.raises(ValueError, match=rf"^expected uint8 images \(N, 32, 32, 3\) with N > 0, got uint8 "
                                         rf"\({', '.join(map(str, shape))}\)$"):
        channel_stats(np.zeros(shape, np.uint8))
