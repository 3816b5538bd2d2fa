"""Beyond the report's numbers: where a trained model fails, how calibrated it is, how it degrades under
CIFAR-10-C-style corruptions (``python -m lib.analysis``, notebook 06), and the figures of that analysis and of the
augmentations (notebook 01)."""
