"""What the repository reads from outside. The CIFAR-10 files: the official release's layout, MD5s and ``--download``
(``official``), its pickle format read safely, nothing but numpy arrays and plain containers admitted (``pickles``),
and synthetic files in the same format for the smoke profile and the tests (``synthetic``); ``lib.data`` turns them
into a run's arrays. The original team's published training logs, report/reference/ (``original_logs``), which
Figure 1 and ``lib.report`` hold a run against.
"""
