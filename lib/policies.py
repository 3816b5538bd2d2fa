"""The augmentation specification both pipelines read (``AugmentSpec``), and RandAugment and AutoAugment as data:
the op list, each op's magnitude range, AutoAugment's CIFAR-10 policy.

Small published facts, kept here rather than read from torchvision's private tables (``_AUGMENTATION_SPACE``,
``_policies``), so that every torchvision the requirements allow gives the batched path the same augmentations.
Values from the RandAugment paper (Cubuk et al. 2019, arXiv:1909.13719) and AutoAugment's CIFAR-10 policy
(Cubuk et al. 2018, arXiv:1805.09501), in torchvision's conventions (magnitude bins; translation up to 150/331 of
the image side). tests/test_batch_augment.py checks them against hand-computed values, and against torchvision's
own tables where the installed version still has them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PADDING = 4                    # RandomCrop(32, padding=4): the standard CIFAR crop
ERASING_SCALE = (0.02, 0.33)   # v2.RandomErasing defaults (area fraction, aspect ratio); the upper end of the area
ERASING_RATIO = (0.3, 3.3)     # is cfg.erasing_max_area

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


@dataclass(frozen=True)
class AugmentSpec:
    """What the augmentation does, read once from a RunConfig: the per-sample (``lib.augment.train_transform``)
    and the batched (``lib.batch_augment.BatchAugment``) pipelines and MixUp/CutMix (``BatchMix``) read this, never
    the config. An op that is off has strength 0 (or False / None)."""

    crop: bool = False
    flip: bool = False
    jitter: float = 0.0                # ColorJitter brightness/contrast/saturation j, hue j/4
    rotation: float = 0.0              # RandomRotation +-degrees
    policy: str | None = None          # "randaugment", "autoaugment" (alternatives; the report tried both) or None
    num_ops: int = 2                   # policy ops per image (AutoAugment: its sub-policies' 2)
    magnitude: int = 9                 # RandAugment magnitude bin of 31
    erasing_prob: float = 0.0
    erasing_max_area: float = ERASING_SCALE[1]
    erasing_random: bool = False       # fill with per-pixel N(0, 1) (value="random") instead of 0
    mix_prob: float = 0.0              # a batch gets MixUp or CutMix (50/50) with this probability
    mixup_alpha: float = 1.0
    cutmix_alpha: float = 1.0

    @classmethod
    def of(cls, source: Any) -> "AugmentSpec":
        """``source`` itself if it is a spec, else the spec of a RunConfig (its ``augment_ops()`` and settings)."""
        if isinstance(source, cls):
            return source
        cfg, ops = source, source.augment_ops()
        policy = "randaugment" if "randaugment" in ops else "autoaugment" if "autoaugment" in ops else None
        num_ops = cfg.randaugment_ops if policy == "randaugment" else 2
        return cls(crop="crop" in ops, flip="flip" in ops, jitter=cfg.color_jitter if "jitter" in ops else 0.0,
                   rotation=cfg.rotation_degrees if "rotation" in ops else 0.0,
                   policy=policy if num_ops > 0 else None,  # RandAugment(num_ops=0) does nothing
                   num_ops=num_ops, magnitude=cfg.randaugment_magnitude,
                   erasing_prob=cfg.erasing_prob if "erasing" in ops else 0.0,
                   erasing_max_area=cfg.erasing_max_area, erasing_random=cfg.erasing_value == "random",
                   mix_prob=cfg.mix_prob, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha)


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
