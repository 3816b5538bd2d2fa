"""What keeps a run whole: one writer at a time and signals that never split an epoch's files (``runlock``), a
failed write explained in one line (``writes``), and stopping early alike on every torchrun rank: --time-limit, a
non-finite loss, a signal (``stopping``). ``lib.train`` uses all three.
"""
