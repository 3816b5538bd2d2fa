"""lib.augment: the per-sample (torchvision v2) pipeline and its switches, MixUp/CutMix, and the two loaders.

The batched pipeline's equivalence with the per-sample one is tested in test_batch_augment.py.
Synthetic uint8 arrays only; no real data.
"""
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from augment_helpers import MEAN, STD, cfg_, images, per_sample, within
from lib.augment import (BatchMix, eval_transform, make_eval_loader, make_train_loader, resolve_loader_kind,
                         train_transform)
from lib.batch_augment import BatchAugment
from lib.config import AUGMENT_OPS


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # statistical checks use 5-sigma bounds; a fixed seed keeps them from ever flaking


# ----------------------------------------------------------------------------------------------------
# Shapes, dtypes, normalisation, switches (both pipelines)
# ----------------------------------------------------------------------------------------------------
def test_per_sample_and_batched_shapes_dtypes_normalisation():
    x = images(16)
    cfg = cfg_(augment="full")
    a = per_sample(cfg, x, (MEAN, STD))
    b = BatchAugment(cfg, MEAN, STD)(x)
    for out in (a, b):
        assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    plain = eval_transform(MEAN, STD)(x[0])
    expected = (x[0].float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(plain, expected)


def test_augment_none_is_exactly_plain_normalisation():
    x = images(32).contiguous(memory_format=torch.channels_last)
    plain = torch.stack([eval_transform(MEAN, STD)(img) for img in x])
    assert torch.equal(BatchAugment(cfg_(augment="none"), MEAN, STD)(x), plain)
    assert torch.equal(per_sample(cfg_(augment="none"), x, (MEAN, STD)), plain)


V2_CLASS = {"crop": v2.RandomCrop, "flip": v2.RandomHorizontalFlip, "jitter": v2.ColorJitter,
            "rotation": v2.RandomRotation, "randaugment": v2.RandAugment, "autoaugment": v2.AutoAugment,
            "erasing": v2.RandomErasing}
PARAM_KEYS = {"crop": {"crop"}, "flip": {"flip"}, "jitter": {"jitter", "jitter_order"}, "rotation": {"rotation"},
              "randaugment": {"ops", "magnitudes"}, "autoaugment": {"ops", "magnitudes"}, "erasing": {"erasing"}}


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_each_op_switches_on_alone(op):
    cfg = cfg_(augment=op, erasing_prob=1.0)
    steps = [type(t) for t in train_transform(cfg, MEAN, STD).transforms]
    to_float = [v2.ToImage, v2.ToDtype, v2.Normalize]
    assert steps == [V2_CLASS[op]] + to_float or steps == to_float + [V2_CLASS[op]]
    aug = BatchAugment(cfg, MEAN, STD)
    x = images(64)
    params = aug.sample_params(x)
    assert set(params) == PARAM_KEYS[op]  # nothing else was drawn, so nothing else was done
    out = aug.apply(x, params)
    assert not torch.equal(out, BatchAugment(cfg_(augment="none"), MEAN, STD)(x))


def test_zero_strengths_switch_ops_off():
    cfg = cfg_(augment="jitter,rotation,erasing", color_jitter=0.0, rotation_degrees=0.0, erasing_prob=0.0)
    x = images(16)
    assert torch.equal(BatchAugment(cfg, MEAN, STD)(x), BatchAugment(cfg_(augment="none"), MEAN, STD)(x))
    assert [type(t) for t in train_transform(cfg, MEAN, STD).transforms] == [v2.ToImage, v2.ToDtype, v2.Normalize]
    no_ops = cfg_(augment="randaugment", randaugment_ops=0)  # RandAugment with 0 ops per image does nothing
    assert torch.equal(BatchAugment(no_ops, MEAN, STD)(x), BatchAugment(cfg_(augment="none"), MEAN, STD)(x))


# ----------------------------------------------------------------------------------------------------
# MixUp / CutMix
# ----------------------------------------------------------------------------------------------------
def test_batch_mix_soft_targets_rate_and_lambda():
    torch.manual_seed(0)
    mix = BatchMix(cfg_(mix_prob=0.5, mixup_alpha=1.0, cutmix_alpha=1.0))
    n_batches, mixup_lams, cutmix_lams = 400, [], []
    y = torch.arange(16) % 10  # neighbours (the rolled partner) always differ in label
    x = torch.rand(16, 3, 16, 16)
    for _ in range(n_batches):
        xm, soft = mix(x, y)
        assert soft.shape == (16, 10) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(1), torch.ones(16))
        lam = soft[0, y[0]].item()  # weight of each image's own label
        if soft.max() == 1:
            assert torch.equal(xm, x) and torch.equal(soft.argmax(1), y)
        elif ((xm == x) | (xm == x.roll(1, 0))).all():  # CutMix pastes pixels: lambda = area kept
            cutmix_lams.append(lam)
            torch.testing.assert_close((xm == x).all(1).float().mean((1, 2)), torch.full((16,), lam))
        else:  # MixUp blends every pixel with the same lambda
            mixup_lams.append(lam)
            torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))
    mixed = len(mixup_lams) + len(cutmix_lams)
    assert within(mixed / n_batches, 0.5, n_batches)  # mix_prob
    assert within(len(cutmix_lams) / mixed, 0.5, mixed)  # MixUp or CutMix, 50/50
    assert abs(np.mean(mixup_lams) - 0.5) < 0.08 and np.std(mixup_lams) > 0.2  # Beta(1, 1): uniform
    assert np.mean(cutmix_lams) > 0.5  # torchvision clips the box at the border, so CutMix keeps more


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_batch_mix_extremes(p):
    mix = BatchMix(cfg_(mix_prob=p))
    y = torch.arange(8)
    rows = [mix(torch.rand(8, 3, 32, 32), y)[1] for _ in range(20)]
    assert all((r.max(1).values == 1).all() == (p == 0) for r in rows)


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------
def arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("kind", ["torchvision", "device"])
def test_train_loader_batches(kind):
    x, y = arrays(100)
    cfg = cfg_(batch_size=32, augment="full", mix_prob=0.5)
    loader = make_train_loader(cfg, x, y, MEAN, STD, "cpu", kind)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # drop_last
    for xb, soft in batches:
        assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32 and xb.device.type == "cpu"
        assert xb.is_contiguous() and not xb.is_contiguous(memory_format=torch.channels_last)  # CPU default: NCHW
        assert soft.shape == (32, 10) and torch.allclose(soft.sum(1), torch.ones(32))
    small = make_train_loader(cfg, x[:20], y[:20], MEAN, STD, "cpu", kind)  # smaller than one batch
    assert len(small) == 1 and next(iter(small))[0].shape[0] == 20


def test_loaders_agree_on_batches_and_labels():
    x, y = arrays(96)
    cfg = cfg_(batch_size=16, augment="standard", mix_prob=0.0)
    labels = {}
    for kind in ("torchvision", "device"):
        loader = make_train_loader(cfg, x, y, MEAN, STD, "cpu", kind)
        got = [soft.argmax(1) for _, soft in loader]
        assert len(got) == len(loader) == 6
        labels[kind] = sorted(torch.cat(got).tolist())
    assert labels["torchvision"] == labels["device"] == sorted(y.tolist())


@pytest.mark.parametrize("kind,workers", [("torchvision", 0), ("torchvision", 1), ("device", 0)])
def test_manual_seed_replays_an_epoch(kind, workers):
    x, y = arrays(32)
    cfg = cfg_(batch_size=8, augment="full", mix_prob=0.5, num_workers=workers)
    loader = make_train_loader(cfg, x, y, MEAN, STD, "cpu", kind)

    def epoch(seed):
        torch.manual_seed(seed)
        return [b for batch in loader for b in batch]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_eval_loader_in_order_and_normalised():
    x, y = arrays(70)
    loader = make_eval_loader(x, y, MEAN, STD, "cpu", batch_size=32)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [32, 32, 6]
    xs = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(y))
    expected = torch.stack([eval_transform(MEAN, STD)(torch.from_numpy(img).permute(2, 0, 1)) for img in x])
    assert torch.equal(xs, expected)


def test_resolve_loader_kind_and_bad_inputs():
    assert resolve_loader_kind("auto", "cpu") == "torchvision"
    assert resolve_loader_kind("device", "cpu") == "device"
    with pytest.raises(ValueError, match="loader"):
        resolve_loader_kind("dali", "cpu")
    x, y = arrays(8)
    with pytest.raises(ValueError, match="uint8"):
        make_train_loader(cfg_(), x.astype(np.float32), y, MEAN, STD, "cpu", "device")
    with pytest.raises(ValueError, match="labels"):
        make_eval_loader(x, y[:5], MEAN, STD, "cpu")
