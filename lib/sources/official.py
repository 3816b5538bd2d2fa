"""The official CIFAR-10 release: its file layout, its MD5s, and ``--download`` (fetch the archive, check it, unpack
only the batches). ``lib.data`` reads what is here; ``is_official_release`` tells it whether a copy is byte-for-byte
the release (a JPEG-decoded or re-pickled copy is not).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..common import UserError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

# The official release (https://www.cs.toronto.edu/~kriz/cifar.html) and its files' MD5s, as torchvision's
# CIFAR10 lists them: the archive is checked after --download; the batches decide whether a copy is official.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def _candidates(data_dir: Path) -> list[Path]:
    return [data_dir / BATCH_DIR, data_dir]  # DATA_DIR/cifar-10-batches-py, or DATA_DIR being that folder


def has_any_cifar_file(data_dir: Path) -> bool:
    return any((d / name).exists() for d in _candidates(data_dir) for name in (*TRAIN_BATCHES, TEST_BATCH, META))


def _complete_dir(data_dir: Path) -> Path | None:
    return next((d for d in _candidates(data_dir) if all((d / name).is_file() for name in TRAIN_BATCHES)), None)


def find_cifar_dir(data_dir) -> Path:
    """The folder holding data_batch_1..5: ``data_dir/cifar-10-batches-py`` or ``data_dir`` itself."""
    data_dir = Path(data_dir)
    if (found := _complete_dir(data_dir)) is not None:
        return found
    for d in _candidates(data_dir):  # a partial copy: say exactly what is missing
        missing = [name for name in TRAIN_BATCHES if not (d / name).is_file()]
        if len(missing) < len(TRAIN_BATCHES):
            raise UserError(f"{d}: missing {', '.join(missing)} (the official layout has data_batch_1..5, "
                            f"{TEST_BATCH} and {META}); re-fetch it with --download")
    raise UserError(
        f"no CIFAR-10 found: looked for data_batch_1..5 in {data_dir / BATCH_DIR} and in {data_dir}. "
        f"Get it with --download (fetches the official archive, about 163 MB, and checks its MD5), or download "
        f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into {data_dir}")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # a checksum, not security: also allowed on FIPS systems
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_official_release(root: Path) -> bool:
    """Whether every batch file in ``root`` is byte-for-byte the official release's (a JPEG-decoded or
    re-pickled copy holds other pixels or other bytes, and is not)."""
    return all(_md5(root / name) == OFFICIAL_MD5[name] for name in (*TRAIN_BATCHES, TEST_BATCH)
               if (root / name).is_file())


def download(data_dir: Path) -> None:
    """Fetch the official archive, check its MD5, and put its batches into ``DATA_DIR/cifar-10-batches-py``.

    The archive goes to a temporary folder first: a failed or wrong download leaves nothing behind. Only the
    batch files, by their known names, are taken from it (no paths from the archive are ever written).
    """
    root = data_dir.parent if data_dir.name == BATCH_DIR else data_dir
    root.mkdir(parents=True, exist_ok=True)
    print(f"downloading CIFAR-10 from {CIFAR10_URL} into {root / BATCH_DIR}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".cifar10-download-", dir=root) as tmp:
        archive, staged = Path(tmp) / "cifar-10-python.tar.gz", Path(tmp) / BATCH_DIR
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as exc:  # no network, HTTP error (URLError is an OSError), disk full
            raise UserError(f"could not download CIFAR-10 from {CIFAR10_URL} into {root}: {exc}") from None
        if (md5 := _md5(archive)) != CIFAR10_ARCHIVE_MD5:
            raise UserError(f"{CIFAR10_URL}: the downloaded archive has MD5 {md5}, not the official "
                            f"{CIFAR10_ARCHIVE_MD5} (a broken or altered download); nothing was unpacked")
        wanted = (*TRAIN_BATCHES, TEST_BATCH, META)
        staged.mkdir()
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    folder, _, name = member.name.removeprefix("./").partition("/")
                    if member.isfile() and folder == BATCH_DIR and name in wanted:
                        with tar.extractfile(member) as src, open(staged / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"could not unpack {CIFAR10_URL} into {root}: {exc}") from None
        if missing := [name for name in wanted if not (staged / name).is_file()]:
            raise UserError(f"{CIFAR10_URL}: the archive lacks {', '.join(missing)}")
        (root / BATCH_DIR).mkdir(exist_ok=True)
        for name in wanted:  # each file appears whole (same filesystem: a rename)
            os.replace(staged / name, root / BATCH_DIR / name)


def download_if_missing(data_dir: Path) -> None:
    """``download`` unless ``data_dir`` (or its cifar-10-batches-py) already holds data_batch_1..5."""
    if _complete_dir(Path(data_dir)) is None:
        download(Path(data_dir))
