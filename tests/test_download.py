"""--download: the official archive fetched with urllib (here a local tar.gz by file:// URL), its MD5 checked,
only the known batch files unpacked, and read through the restricted unpickler; official copies are told
apart from re-encoded ones by the batches' MD5s."""
import hashlib
import io
import os
import pickle
import tarfile

import pytest

import lib.sources.official as official_mod
from lib.common import UserError
from lib.data import load_cifar10, load_splits
from lib.sources.official import BATCH_DIR, META, TEST_BATCH, TRAIN_BATCHES
from lib.sources.pickles import SMOKE_MARKER
from lib.sources.synthetic import write_smoke_dataset

FILES = (*TRAIN_BATCHES, TEST_BATCH, META)


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def make_archive(tmp_path, name="cifar.tar.gz", replace=None):
    """A tar.gz laid out as the official one, plus members that must never be written: a path escaping the
    folder, a link, and a file the loader does not need."""
    src = write_smoke_dataset(tmp_path / f"src-{name}", per_batch=20, test_count=20, kaggle_count=10)
    for fname, obj in (replace or {}).items():
        (src / fname).write_bytes(pickle.dumps(obj, protocol=2))
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tar:
        for fname in FILES:
            tar.add(src / fname, arcname=f"{BATCH_DIR}/{fname}")
        evil = b"escaped"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
        link = tarfile.TarInfo(f"{BATCH_DIR}/readme.html")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def serve(monkeypatch, archive, md5):
    monkeypatch.setattr(official_mod, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(official_mod, "CIFAR10_ARCHIVE_MD5", md5)


def test_download_checks_md5_unpacks_only_the_batches_and_reads_them(tmp_path, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    serve(monkeypatch, archive, md5)
    dl = tmp_path / "dl"
    d = load_cifar10(dl, download=True)
    assert d.train_x.shape == (100, 32, 32, 3) and d.test_x.shape == (20, 32, 32, 3)
    assert sorted(os.listdir(dl)) == [BATCH_DIR], "no archive or temporary folder left behind"
    assert sorted(os.listdir(dl / BATCH_DIR)) == sorted(FILES), "only the known batch files"
    assert not (tmp_path / "escaped.txt").exists() and not (dl / "escaped.txt").exists()

    monkeypatch.setattr(official_mod, "CIFAR10_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert load_cifar10(dl, download=True).train_x.shape == (100, 32, 32, 3)  # present: nothing fetched


def test_wrong_md5_unpacks_nothing(tmp_path, monkeypatch):
    archive, _ = make_archive(tmp_path)
    serve(monkeypatch, archive, "c58f30108f718f92721af3b95e74349a")  # the official MD5: this archive is not it
    with pytest.raises(UserError, match="MD5 .* not the official c58f30108f718f92721af3b95e74349a") as err:
        load_cifar10(tmp_path / "dl", download=True)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path / "dl") == [], "nothing unpacked, no temporary files"


def test_unreachable_download_is_a_user_error(tmp_path, monkeypatch):
    serve(monkeypatch, tmp_path / "nowhere.tar.gz", "0" * 32)
    with pytest.raises(UserError, match="could not download CIFAR-10"):
        load_cifar10(tmp_path / "dl", download=True)


def test_downloaded_batches_go_through_the_restricted_unpickler(tmp_path, monkeypatch):
    archive, md5 = make_archive(tmp_path, replace={"data_batch_2": RunsCode()})
    serve(monkeypatch, archive, md5)  # even a checksum-valid archive is not trusted to run code
    with pytest.raises(UserError, match="refusing to unpickle .*system"):
        load_cifar10(tmp_path / "dl", download=True)


def test_official_release_is_recognised_by_the_batches_md5(tmp_path, monkeypatch):
    """A copy with other bytes (e.g. JPEG-decoded) is CIFAR-10 but not the official release; synthetic is None."""
    root = write_smoke_dataset(tmp_path / "copy", per_batch=20, test_count=20, kaggle_count=10)
    meta = pickle.loads((root / META).read_bytes(), encoding="bytes")
    del meta[SMOKE_MARKER.encode()]  # now it reads as (a copy of) CIFAR-10
    (root / META).write_bytes(pickle.dumps(meta, protocol=2))

    copy = load_splits(tmp_path / "copy")
    assert copy.source == "cifar10" and copy.data_official is False
    assert copy.description.startswith("CIFAR-10 (re-encoded copy, not the official release) at")

    ours = {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in (*TRAIN_BATCHES, TEST_BATCH)}
    monkeypatch.setattr(official_mod, "OFFICIAL_MD5", ours)  # pretend these bytes are the release's
    official = load_splits(tmp_path / "copy")
    assert official.data_official is True and official.description.startswith("CIFAR-10 at")

    assert load_splits(tmp_path / "copy", val_source="holdout").data_official is True
    synthetic = write_smoke_dataset(tmp_path / "smoke", per_batch=20, test_count=20, kaggle_count=10)
    assert load_splits(synthetic.parent).data_official is None


def test_a_run_asking_for_download_gets_it(tmp_path, monkeypatch):
    """load_splits (what lib.train calls with --download) passes the request on: a new folder is filled."""
    archive, md5 = make_archive(tmp_path)
    serve(monkeypatch, archive, md5)
    splits = load_splits(tmp_path / "dl", download=True)
    assert len(splits.train_y) == 100 and (tmp_path / "dl" / BATCH_DIR / "data_batch_5").is_file()
