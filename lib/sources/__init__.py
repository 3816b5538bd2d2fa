"""Where the CIFAR-10 files come from: the official release (``official``: its layout and MD5s, ``--download``) and
synthetic files in the same format for the smoke profile and the tests (``synthetic``). ``lib.data`` reads both.
"""
