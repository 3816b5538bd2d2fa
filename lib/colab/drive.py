"""Google Drive on Colab: one folder (FOLDER) keeps what a user would keep, written so that Drive's trash stays
empty.

Drive sends a file that is replaced (a rename over it, as lib.train's atomic writes do every epoch) or deleted to
its trash, which counts toward the account's storage for 30 days; a file written again in place stays one file,
its earlier contents kept as versions (report/colab.md, "Google Drive: why runs are copied in place", cites
Google's pages). So nothing here renames over or deletes a file on Drive:

- ``Drive.keep``: ``runs/`` is linked into the Drive folder (04-07 read run folders there); any other kept path
  (figures/, report/, submission.csv, the Kaggle pickle) is copied into it, in place, after every cell
  (``Drive.sync``), and back into a new runtime that lacks it.
- ``RunMirror``: a run folder trained on the runtime's own disk (where lib.train's atomic renames stay), copied
  into Drive in place after every epoch, and back into a new runtime to continue the run.
A copy that fails (a full Drive, a network error) is one warning line; the next copy tries again.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

FOLDER = "MyDrive/cifar10-resnets"  # under the mount point (Colab: /content/drive)
LINKED = ("runs",)  # kept paths linked into the Drive folder (read and written there); the others are copied
RUN_FILES = ("last.pt", "best.pt", "history.csv", "config.json")  # copied in lib.train's write order


class Drive:
    """Google Drive mounted at ``mount`` (Colab's google.colab.drive), keeping ``mount/folder``."""

    def __init__(self, mount: str | os.PathLike, folder: str = FOLDER):
        self.mount_point = Path(mount)
        self.path = self.mount_point / folder
        self.copied: dict[str, dict[str, tuple]] = {}  # kept path -> file -> signature of its last copy

    def mounted(self) -> bool:
        return (self.mount_point / "MyDrive").is_dir()

    def mount(self) -> None:
        """Mount Google Drive (again, after ``flush``); Colab asks for access the first time."""
        from ..common import UserError

        if not self.mounted():
            from google.colab import drive  # noqa: PLC0415 - only on Colab

            try:
                drive.mount(str(self.mount_point))
            except Exception as exc:  # noqa: BLE001 - declined access, a timeout: ValueError or Colab's own
                raise UserError(f"Google Drive is not mounted ({type(exc).__name__}: {exc}); run the first cell "
                                "again and allow access, or keep nothing there: setup(ROOT, keep=[])") from None
        self.path.mkdir(parents=True, exist_ok=True)

    def flush(self) -> None:
        """Push every write to Google Drive before the runtime can go, and unmount it (Colab's only flush)."""
        if not self.mounted():
            return
        from google.colab import drive  # noqa: PLC0415

        try:
            drive.flush_and_unmount()
            print(f"Google Drive flushed and unmounted: {self.path} is complete; the first cell mounts it again")
        except Exception as exc:  # noqa: BLE001 - a failed flush must not hide the training that finished
            print(f"warning: flushing Google Drive failed ({type(exc).__name__}: {exc})", file=sys.stderr)

    def relative(self, path: str | os.PathLike) -> Path | None:
        """``path`` relative to the Drive folder when it lies in it (through the runs/ link too), else None."""
        try:
            return Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return None

    def keep(self, root: Path, paths: Iterable[str]) -> None:
        """Keep ``paths`` (relative to the repository ``root``) in the Drive folder, and say where."""
        said = []
        for rel in paths:
            local, remote = root / rel, self.path / rel
            if rel in LINKED:
                remote.mkdir(parents=True, exist_ok=True)
                if not local.exists() and not local.is_symlink():
                    local.symlink_to(remote, target_is_directory=True)
                if local.resolve() == remote.resolve():
                    said.append(f"{rel}/ (linked)")
                else:  # a real folder made in this runtime before: left alone
                    print(f"note: {rel}/ is a folder of this runtime, not on Drive: move it into {remote}, delete "
                          "it and run the first cell again to keep it", file=sys.stderr)
                continue
            if remote.exists() and not local.exists():  # a new runtime: bring back what an earlier one kept
                _copy_back(remote, local)
            self.copied[rel] = {str(p): _signature(p) for p in _files(local)}
            said.append(rel)
        copied = [r for r in paths if r not in LINKED]
        print(f"Google Drive: {self.path} keeps " + ", ".join(said)
              + (f" ({', '.join(copied)}: copied there after every cell)" if copied else ""))

    def sync(self, root: Path) -> None:
        """Copy every kept file that changed since its last copy into the Drive folder, in place."""
        if not self.mounted():
            return
        for rel, copied in self.copied.items():
            for path in _files(root / rel):
                if (copied.get(str(path)) != _signature(path)
                        and copy_in_place(path, self.path / path.relative_to(root))):
                    copied[str(path)] = _signature(path)


class RunMirror:
    """A run folder of this runtime (``local``, where lib.train writes atomically) and its copy in the Drive folder
    (``remote``), which holds RUN_FILES and nothing else however long the run: each is written again in place."""

    def __init__(self, local: str | os.PathLike, remote: str | os.PathLike):
        self.local, self.remote = Path(local), Path(remote)
        self.copied: dict[str, tuple] = {}

    def restore(self) -> bool:
        """Copy the run from Drive into ``local`` when Drive has more of it (a new runtime: local has nothing)."""
        from ..checkpoint import read_checkpoint
        from ..common import UserError, atomic_path

        if not (self.remote / "last.pt").is_file() or _epochs(self.remote) <= _epochs(self.local):
            return False
        for name in RUN_FILES:
            if (self.remote / name).is_file():
                with atomic_path(self.local / name) as tmp:
                    shutil.copyfile(self.remote / name, tmp)
                self.copied[name] = _signature(self.local / name)
        try:
            read_checkpoint(self.local / "last.pt", resume=True)
        except UserError as exc:  # a copy cut short: Drive still has the previous contents as a version
            (self.local / "last.pt").unlink()
            raise UserError(f"{self.remote / 'last.pt'} on Google Drive is damaged ({exc}); Drive keeps its earlier "
                            "versions (right-click it in Drive > Manage versions): put the previous one back, or "
                            "delete the folder to start the run again") from None
        print(f"continuing from Google Drive: {self.remote} copied into {self.local}")
        return True

    def sync(self) -> bool:
        """Copy the files that changed, in lib.train's order; after a failure the rest waits for the next sync, so
        Drive's copies never describe a later epoch than its last.pt."""
        for name in RUN_FILES:
            path = self.local / name
            if not path.is_file() or self.copied.get(name) == _signature(path):
                continue
            if not copy_in_place(path, self.remote / name):
                return False
            self.copied[name] = _signature(path)
        return True


def copy_in_place(src: Path, dst: Path) -> bool:
    """Write ``src``'s bytes into ``dst`` itself (opened for writing and truncated: the same file, never a rename);
    False and one warning line when that fails."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return True
    except OSError as exc:
        print(f"warning: could not copy {src.name} into {dst.parent} ({type(exc).__name__}: {exc}); this runtime "
              f"keeps it in {src.parent}, the next copy tries again", file=sys.stderr)
        return False


def _epochs(run_dir: Path) -> int:
    """Epochs a run folder's history.csv records (-1 without a last.pt)."""
    if not (run_dir / "last.pt").is_file():
        return -1
    try:
        return max(len((run_dir / "history.csv").read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


def _copy_back(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def _signature(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
