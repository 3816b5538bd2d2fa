"""Fixtures every test file shares. Tests run on synthetic smoke data only, never on real CIFAR-10 files."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import lib` also under a bare `pytest`

from lib.smoke_data import write_smoke_dataset  # noqa: E402

# CI has 2 cores: 2 threads in one process, or 1 per worker under pytest-xdist (-n 2), so nothing oversubscribes.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """A folder with the smoke dataset: cifar-10-batches-py/ (official layout), kaggle_test.pkl, kaggle_test_hwc.pkl.

    Shared by the whole session: treat it as read-only (copy it to change a file).
    """
    root = tmp_path_factory.mktemp("smoke")
    write_smoke_dataset(root)
    return root


# Under pytest -n N (make test: -n 2): every test in test_notebooks.py on one worker, scheduled first, every other
# test balanced one at a time as in --dist load. The notebook checks share one execution of the notebook chain (a
# session fixture); a second worker would execute the notebooks again. (xdist's own --dist loadgroup does not
# group here: with pytest 9 it cannot rename the tests it groups.)
NOTEBOOK_TESTS = "tests/test_notebooks.py::"
# test_sweep.py's tests share one local Ray (a module fixture; starting Ray costs seconds): one worker too
ONE_WORKER = (NOTEBOOK_TESTS, "tests/test_sweep.py::")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksOnOneWorker(LoadScopeScheduling):
        # one work unit per test, except test_notebooks.py's: one unit, the largest, so it goes out first
        def _split_scope(self, nodeid: str) -> str:
            return next((prefix for prefix in ONE_WORKER if nodeid.startswith(prefix)), nodeid)

    return NotebooksOnOneWorker(config, log)
