"""Helpers shared by test_augment.py and test_batch_augment.py: synthetic images, both pipelines, binomial bounds."""
import math

import torch
from torchvision.transforms.v2 import functional as F

from lib.augment import train_transform
from lib.batch_augment import BatchAugment
from lib.config import make_config

IDENTITY = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # mean/std that leave x / 255: pixel values stay decodable
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def cfg_(**kw):
    return make_config("smoke", **kw)


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def per_sample(cfg, x, mean_std=IDENTITY):
    """The per-sample path as the torchvision loader runs it: PIL images through train_transform."""
    t = train_transform(cfg, *mean_std)
    return torch.stack([t(F.to_pil_image(img)) for img in x])


def batched(cfg, x, mean_std=IDENTITY, batch=256, record=None):
    """The batched path over ``x`` in batches; ``record`` (a list) collects each batch's sampled parameters."""
    aug = BatchAugment(cfg, *mean_std)
    out = []
    for chunk in x.split(batch):
        params = aug.sample_params(chunk)
        out.append(aug.apply(chunk, params))
        if record is not None:
            record.append(params)
    return torch.cat(out)


def within(freq, p, n, sigmas=5.0):
    """An observed frequency agrees with probability p over n draws (binomial, `sigmas` standard errors)."""
    return abs(freq - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def same_mean(a, b, sigmas=5.0):
    """Two samples' means agree within `sigmas` standard errors of their difference."""
    se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    return abs(a.mean().item() - b.mean().item()) <= sigmas * se
