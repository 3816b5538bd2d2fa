"""Fixtures every test file shares. Tests run on synthetic smoke data only, never on real CIFAR-10 files."""
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import lib` also under a bare `pytest`

from lib.sources.synthetic import write_smoke_dataset  # noqa: E402

# CI has 2 cores: 2 threads in one process, or 1 per worker under pytest-xdist (-n 2), so nothing oversubscribes.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture
def free_port():
    """A TCP port nothing listens on now, for torchrun's --master_port: a fixed number collides when two torchrun
    tests run at once (pytest-xdist) or another program holds it."""
    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """A folder with the smoke dataset: cifar-10-batches-py/ (official layout), kaggle_test.pkl, kaggle_test_hwc.pkl.

    Shared by the whole session: treat it as read-only (copy it to change a file).
    """
    root = tmp_path_factory.mktemp("smoke")
    write_smoke_dataset(root)
    return root


# Under pytest -n N (make test: -n 2): every test in test_notebooks.py on one worker, every notebook cell that
# nbval executes (make test's --nbval-lax) on one worker, these two units first (the largest: xdist sends out the
# units with the most tests first, so each gets a worker of its own), every other test balanced one at a time as in
# --dist load. The notebook checks share one execution of the notebook chain (a session fixture); a second worker
# would execute the notebooks again. nbval's cells must run in order in one kernel, and its notebooks in the order
# given (04-06 use the run 03 trains). (xdist's own --dist loadgroup does not group here: with pytest 9 it cannot
# rename the tests it groups.)
NOTEBOOK_TESTS = "tests/test_notebooks.py::"
# test_sweep.py's tests share one local Ray (a module fixture; starting Ray costs seconds): one worker too
ONE_WORKER = (NOTEBOOK_TESTS, "tests/test_sweep.py::")
NBVAL_UNIT = "nbval"  # every cell of every notebook given to pytest --nbval-lax (node ids NOTEBOOK.ipynb::Cell N)


def work_unit(nodeid: str) -> str:
    if ".ipynb::" in nodeid:
        return NBVAL_UNIT
    return next((prefix for prefix in ONE_WORKER if nodeid.startswith(prefix)), nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return NotebooksOnOneWorker(config, log)
