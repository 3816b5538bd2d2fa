"""What keeps a run folder whole: one writer at a time and signals that never split an epoch's files
(``runlock``), and a write that fails explained in one line (``writes``). ``lib.train`` uses both.
"""
