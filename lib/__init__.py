"""CIFAR-10 ResNets of the "Deep Fried Learning" course report, as a small library.

The report's core, in the order data flows (a module imports only those above it):

    common        the user-error type, atomic writes, devices, seeding, CLI glue
    models        the four Table 1 networks by name: build_model("robust_resnet64", dropout=0.2)
    config        a run's every setting (RunConfig, each field of one kind), profiles, the augmentation spec
    data          CIFAR-10 as a run sees it: train/val arrays, hold-outs, subsets, statistics, the Kaggle images
    policies      the augmentation spec (AugmentSpec) and RandAugment / AutoAugment as published tables
    batch_augment the augmentations on whole batches on any device (the "device" loader)
    augment       the per-sample torchvision pipeline, MixUp/CutMix, the training and evaluation loaders
    recipe        SGD-Nesterov, the cosine schedule, label-smoothed loss, one training step, evaluation
    checkpoint    the run folder: checkpoints, history.csv, resume checks, each epoch's files
    train         one run: the loop over epochs (torchrun: lib.scale.distributed)   python -m lib.train --help
    predict       flip-TTA predictions, a Kaggle submission   python -m lib.predict --help
    runs          run folders as the report reads them, and whether a run is a reproduction
    report        Figure 1 and Table 1        python -m lib.report --help

Under it, two packages the core stands on and a reader can take on trust: ``lib.sources`` (what comes from
outside: the official release's layout, MD5s and --download, its pickles read safely, synthetic files in its format
for the smoke profile and the tests, the original team's published logs) and ``lib.guard`` (the run-folder lock and
signals, a failed write explained, stopping early alike on every rank). Beside it, each concern in its own package,
importing the core and never imported by it (torchrun aside): ``lib.colab`` (the notebooks' set-up, what they call,
Google Drive), ``lib.scale`` (Ray Tune sweeps, torchrun), ``lib.analysis`` (failures, calibration, corruptions),
``lib.bench`` (speed, ``make gpu-check``).
"""
__version__ = "0.1.0"
