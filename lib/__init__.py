"""CIFAR-10 ResNets of the "Deep Fried Learning" course report, as a small library.

Data flows one way: data -> augment -> train -> checkpoint/history -> predict/report.
Every module is importable on its own; the command lines are ``python -m lib.<module>``.
"""
__version__ = "0.1.0"
