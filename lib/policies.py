"""RandAugment and AutoAugment as data: the op list, each op's magnitude range, AutoAugment's CIFAR-10 policy.

Small published facts, kept here rather than read from torchvision's private tables (``_AUGMENTATION_SPACE``,
``_policies``), so that every torchvision the requirements allow gives the batched path the same augmentations.
Values from the RandAugment paper (Cubuk et al. 2019, arXiv:1909.13719) and AutoAugment's CIFAR-10 policy
(Cubuk et al. 2018, arXiv:1805.09501), in torchvision's conventions (magnitude bins; translation up to 150/331 of
the image side). tests/test_batch_augment.py checks them against hand-computed values, and against torchvision's
own tables where the installed version still has them.
"""
from __future__ import annotations

from typing import Sequence

import torch

# One op list for both policies, names as torchvision's; RandAugment draws from the first 14 (no Invert).
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
OP = {name: i for i, name in enumerate(OPS)}
RANDAUGMENT_OPS = OPS[:14]
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # contiguous in OPS
RANDAUGMENT_BINS = 31  # torchvision's num_magnitude_bins default: magnitude 0..30
AUTOAUGMENT_BINS = 10  # AutoAugment's policies index 10 bins

# Magnitude at the top bin of the ops whose magnitude grows linearly from 0; the sign is drawn at random (50/50).
# Shear: tan of the shear angle; Translate: pixels, as a fraction of the side (150/331, from 331-pixel ImageNet);
# Rotate: degrees; the colour ops: the enhancement factor is 1 + magnitude.
SIGNED_MAX = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331, "TranslateY": 150 / 331, "Rotate": 30.0,
              "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}

# AutoAugment, CIFAR-10 policy: 25 sub-policies of two (op, probability, magnitude bin) steps.
AUTOAUGMENT_CIFAR10 = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


def policy_name(ops: Sequence[str]) -> str | None:
    """Which of the two policies ``cfg.augment_ops()`` asks for (alternatives; the report tried both)."""
    return "randaugment" if "randaugment" in ops else "autoaugment" if "autoaugment" in ops else None


def magnitude(name: str, bin: int | None, num_bins: int, height: int, width: int) -> float:
    """Unsigned magnitude of op ``name`` at magnitude ``bin`` of ``num_bins``; 0 for ops without one.

    Computed with torch's float32 ``linspace`` as torchvision does, so the values agree bit for bit."""
    if bin is None or name not in SIGNED_MAX and name not in ("Posterize", "Solarize"):
        return 0.0
    if name == "Posterize":  # bits kept: 8 down to 4
        return float((8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int()[bin])
    if name == "Solarize":  # threshold as a fraction of white: 1 (nothing inverted) down to 0
        return float(torch.linspace(1.0, 0.0, num_bins)[bin])
    top = SIGNED_MAX[name] * {"TranslateX": width, "TranslateY": height}.get(name, 1)
    return float(torch.linspace(0.0, top, num_bins)[bin])
