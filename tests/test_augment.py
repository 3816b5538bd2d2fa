"""lib.augment: the per-sample (torchvision v2) and batched paths, MixUp/CutMix and the two loaders.

The batched path must be statistically equivalent to the per-sample one: each test draws many images through
both and compares what was done to them (decoded from crafted inputs, or from the recorded parameters) with
the distribution torchvision samples from. Synthetic uint8 arrays only; no real data.
"""
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lib.augment import (OP, OPS, BatchAugment, BatchMix, eval_transform, make_eval_loader, make_train_loader,
                         resolve_loader_kind, train_transform)
from lib.config import AUGMENT_OPS, make_config

IDENTITY = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # mean/std that leave x / 255: pixel values stay decodable
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # statistical checks use 5-sigma bounds; a fixed seed keeps them from ever flaking


def cfg_(**kw):
    return make_config("smoke", **kw)


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def per_sample(cfg, x, mean_std=IDENTITY):
    """The per-sample path as the torchvision loader runs it: PIL images through train_transform."""
    t = train_transform(cfg, *mean_std)
    return torch.stack([t(F.to_pil_image(img)) for img in x])


def batched(cfg, x, mean_std=IDENTITY, batch=256, record=None, **kw):
    aug = BatchAugment(cfg, *mean_std, **kw)
    out = []
    for chunk in x.split(batch):
        out.append(aug(chunk))
        if record is not None:
            record.append(dict(aug.last_params))
    return torch.cat(out)


def within(freq, p, n, sigmas=5.0):
    """An observed frequency agrees with probability p over n draws (binomial, `sigmas` standard errors)."""
    return abs(freq - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def same_mean(a, b, sigmas=5.0):
    """Two samples' means agree within `sigmas` standard errors of their difference."""
    se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    return abs(a.mean().item() - b.mean().item()) <= sigmas * se


# ----------------------------------------------------------------------------------------------------
# Shapes, dtypes, normalisation, switches
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
PARAM_KEYS = {"crop": {"crop"}, "flip": {"flip"}, "jitter": {"jitter"}, "rotation": {"rotation"},
              "randaugment": {"ops", "magnitudes"}, "autoaugment": {"ops", "magnitudes"}, "erasing": {"erasing"}}


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_each_op_switches_on_alone(op):
    cfg = cfg_(augment=op, erasing_prob=1.0)
    steps = [type(t) for t in train_transform(cfg, MEAN, STD).transforms]
    to_float = [v2.ToImage, v2.ToDtype, v2.Normalize]
    assert steps == [V2_CLASS[op]] + to_float or steps == to_float + [V2_CLASS[op]]
    aug = BatchAugment(cfg, MEAN, STD)
    x = images(64)
    out = aug(x)
    assert set(aug.last_params) == PARAM_KEYS[op]  # nothing else was drawn, so nothing else was done
    assert not torch.equal(out, BatchAugment(cfg_(augment="none"), MEAN, STD)(x))


def test_zero_strengths_switch_ops_off():
    cfg = cfg_(augment="jitter,rotation,erasing", color_jitter=0.0, rotation_degrees=0.0, erasing_prob=0.0)
    x = images(16)
    assert torch.equal(BatchAugment(cfg, MEAN, STD)(x), BatchAugment(cfg_(augment="none"), MEAN, STD)(x))
    assert [type(t) for t in train_transform(cfg, MEAN, STD).transforms] == [v2.ToImage, v2.ToDtype, v2.Normalize]


def test_bad_batch_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(cfg_(), MEAN, STD)(torch.rand(2, 3, 32, 32))


# ----------------------------------------------------------------------------------------------------
# Each batched op against torchvision's own kernel
# ----------------------------------------------------------------------------------------------------
POLICY_CASES = [("ShearX", 0.09), ("ShearX", -0.3), ("ShearY", 0.09), ("ShearY", -0.09), ("TranslateX", 4.35),
                ("TranslateX", -4.35), ("TranslateY", 4.35), ("TranslateY", -14.0), ("Rotate", 9.0),
                ("Rotate", -30.0), ("Brightness", 0.27), ("Brightness", -0.27), ("Color", 0.27), ("Color", -0.9),
                ("Contrast", 0.27), ("Contrast", -0.27), ("Sharpness", 0.27), ("Sharpness", -0.27),
                ("Posterize", 7.0), ("Posterize", 4.0), ("Solarize", 0.7), ("Solarize", 0.1),
                ("AutoContrast", 0.0), ("Equalize", 0.0), ("Invert", 0.0), ("Identity", 0.0)]


@pytest.mark.parametrize("dispatch", ["indexed", "masked"])
def test_policy_ops_match_torchvision(dispatch):
    x = images(8, seed=1)
    x[0, :, :16] = 40  # a flat region and a low-contrast channel for AutoContrast/Equalize edge cases
    ref_aug = v2.RandAugment()
    aug = BatchAugment(cfg_(augment="randaugment"), *IDENTITY, dispatch=dispatch)
    for name, mag in POLICY_CASES:
        ref = torch.stack([ref_aug._apply_image_or_video_transform(
            img, name, mag, interpolation=v2.InterpolationMode.NEAREST, fill=ref_aug._fill) for img in x]).float()
        out = aug._apply_slot(F.to_dtype(x, torch.float32, scale=True), torch.full((8,), OP[name]),
                              torch.full((8,), mag)) * 255
        err = (out - ref).abs().max().item()
        # geometry is pixel-exact; colour ops differ only by torchvision's uint8 arithmetic (it floors the grey
        # level and truncates the blend: up to 2 levels), which the batched path, staying float, skips
        assert err <= (1e-3 if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") else 2.01), \
            (name, mag, err)


def test_rotation_matches_torchvision_rotate():
    x = F.to_dtype(images(4), torch.float32, scale=True)
    aug = BatchAugment(cfg_(augment="rotation"), *IDENTITY)
    for angle in (7.3, -10.0):
        zero = torch.zeros(4)
        inverse = aug._inverse_affine(torch.deg2rad(torch.full((4,), -angle)), zero, zero, zero, zero, zero, zero)
        ours = aug._warp(x, inverse)
        theirs = F.rotate(x, angle, interpolation=v2.InterpolationMode.NEAREST)
        assert (ours != theirs).float().mean() < 1e-3  # nearest neighbour: at most a rare tie rounds differently


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_colour_jitter_matches_torchvision(order):
    x = images(6, seed=2)
    b, c, s, h = 1.15, 0.85, 1.2, -0.04
    fns = [lambda im: F.adjust_brightness(im, b), lambda im: F.adjust_contrast(im, c),
           lambda im: F.adjust_saturation(im, s), lambda im: F.adjust_hue(im, h)]
    xf = F.to_dtype(x, torch.float32, scale=True)
    ref = xf
    for k in order:  # torchvision on float images: no intermediate uint8 rounding to blur the comparison
        ref = fns[k](ref)
    aug = BatchAugment(cfg_(augment="jitter"), *IDENTITY)
    out = aug.jitter_colours(xf, *(torch.full((6,), v) for v in (b, c, s, h)), torch.tensor([order] * 6))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_masked_path_has_no_data_dependent_ops():
    # On the meta device any .item(), nonzero() or boolean indexing (a host sync on CUDA) would raise
    for augment in ("full", "crop,flip,jitter,rotation,autoaugment,erasing"):
        aug = BatchAugment(cfg_(augment=augment), MEAN, STD, dispatch="masked")
        out = aug(torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta"))
        assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    mix = BatchMix(cfg_(mix_prob=1.0))
    for _ in range(6):  # both MixUp and CutMix
        _, soft = mix(out, torch.empty(8, dtype=torch.long, device="meta"))
        assert soft.shape == (8, 10)


def test_dispatch_modes_agree():
    x = images(48, seed=3)
    cfg = cfg_(augment="crop,flip,jitter,rotation,randaugment,erasing", randaugment_ops=3)
    outs = []
    for dispatch in ("indexed", "masked"):
        torch.manual_seed(5)
        outs.append(BatchAugment(cfg, MEAN, STD, dispatch=dispatch)(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Statistical equivalence: batched vs per-sample
# ----------------------------------------------------------------------------------------------------
def position_image():
    """Pixel (r, c) stores its own position: R = 4 + 7r, G = 4 + 7c, B = 255 (padding stays 0)."""
    r = torch.arange(32).view(32, 1).expand(32, 32)
    c = torch.arange(32).view(1, 32).expand(32, 32)
    return torch.stack([4 + 7 * r, 4 + 7 * c, torch.full((32, 32), 255)]).to(torch.uint8)


def decode_crop_flip(out):
    """(dy, dx, flipped) per image from augmented position images (identity normalisation)."""
    u = (out * 255).round().long()
    src_r = (u[:, 0, 16, 16] - 4) // 7
    src_c = (u[:, 1, 16, 16] - 4) // 7
    flipped = u[:, 1, 16, 17] < u[:, 1, 16, 16]
    dx = torch.where(flipped, src_c - 15, src_c - 16)
    return src_r - 16, dx, flipped


def test_crop_offsets_and_flip_rate_match():
    n = 1800
    x = position_image().expand(n, 3, 32, 32).contiguous()
    cfg = cfg_(augment="crop,flip")
    record = []
    decoded = {"per-sample": decode_crop_flip(per_sample(cfg, x)),
               "batched": decode_crop_flip(batched(cfg, x, record=record))}
    for name, (dy, dx, flipped) in decoded.items():
        assert within(flipped.float().mean().item(), 0.5, n), name
        for shift in (dy, dx):
            assert shift.min() >= -4 and shift.max() <= 4, name
            for v in range(-4, 5):  # uniform over -4..4 in both axes, as RandomCrop(32, padding=4)
                assert within((shift == v).float().mean().item(), 1 / 9, n), (name, v)
    # the decoded shifts are exactly the batched path's recorded parameters
    crop = torch.cat([r["crop"] for r in record])
    assert torch.equal(decoded["batched"][0], crop[:, 0]) and torch.equal(decoded["batched"][1], crop[:, 1])
    assert torch.equal(decoded["batched"][2], torch.cat([r["flip"] for r in record]))


def erased_fraction(out, value):
    return (out == 0).all(1).float().mean((1, 2)), (out != 0).all(1).all(1).all(1) & (out[:, 0, 0, 0] == value)


def test_random_erasing_rate_and_area_match():
    n, p = 1600, 0.5
    x = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    cfg = cfg_(augment="erasing", erasing_prob=p)
    areas, rows = {}, {}
    for name, out in (("per-sample", per_sample(cfg, x)), ("batched", batched(cfg, x))):
        box = (out == 0).all(1)  # erased pixels become exactly 0 (value 0 after Normalize)
        frac = box.float().mean((1, 2))
        erased = frac > 0
        assert within(erased.float().mean().item(), p, n), name
        areas[name] = frac[erased]
        # scale (0.02, 0.33) of the area, after torchvision's rounding of the box sides
        assert areas[name].min() >= 0.015 and areas[name].max() <= 0.36, name
        rows[name] = box[erased].float().sum(2).gt(0).sum(1).float()  # box height (aspect ratio 0.3 - 3.3)
    assert same_mean(*areas.values()) and same_mean(*rows.values())
    assert abs(areas["per-sample"].std() - areas["batched"].std()) < 0.02


def test_jitter_factor_distribution_matches():
    n = 800
    x = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)  # flat grey: only brightness changes it (+ rounding)
    cfg = cfg_(augment="jitter", color_jitter=0.2)
    for name, out in (("per-sample", per_sample(cfg, x)), ("batched", batched(cfg, x))):
        ratio = out.mean((1, 2, 3)) * 255 / 128
        # brightness ~ U(0.8, 1.2); torchvision's uint8 steps truncate up to 3 levels (3/128) on the way
        assert 0.77 <= ratio.min() and ratio.max() <= 1.21, name
        assert abs(ratio.mean().item() - 1.0) < 0.025, name
        assert abs(ratio.std().item() - 0.4 / math.sqrt(12)) < 0.012, name


def test_rotation_fill_distribution_matches():
    n = 600
    x = torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)
    cfg = cfg_(augment="rotation", rotation_degrees=10.0)
    record = []
    fills = [(out == 0).all(1).float().mean((1, 2))  # the zero-filled corners grow with |angle|
             for out in (per_sample(cfg, x), batched(cfg, x, record=record))]
    assert 0.01 < fills[0].mean() < 0.1 and same_mean(*fills)
    angle = torch.cat([r["rotation"] for r in record])
    assert angle.abs().max() <= 10 and abs(angle.mean()) < 0.6 and abs(angle.std() - 10 / math.sqrt(3)) < 0.4


def test_randaugment_op_frequencies_match(monkeypatch):
    cfg = cfg_(augment="randaugment", randaugment_ops=2, randaugment_magnitude=9)
    names = list(v2.RandAugment._AUGMENTATION_SPACE)
    assert len(names) == 14  # torchvision's list: Identity ... Equalize
    seen = []
    original = v2.RandAugment._apply_image_or_video_transform

    def spy(self, image, transform_id, magnitude, **kw):
        seen.append((transform_id, magnitude))
        return original(self, image, transform_id, magnitude, **kw)

    monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", spy)
    per_sample(cfg, images(500)[..., :16, :16])  # 16 x 16 keeps the per-sample half fast
    record = []
    batched(cfg, images(2048)[..., :16, :16], batch=128, record=record)
    ops = torch.cat([r["ops"] for r in record]).flatten()
    mags = torch.cat([r["magnitudes"] for r in record]).flatten()
    assert record[0]["ops"].shape == (128, 2)
    for name in names:
        ref = sum(t == name for t, _ in seen) / len(seen)
        ours = (ops == OP[name]).float().mean().item()
        assert within(ref, 1 / 14, len(seen)) and within(ours, 1 / 14, len(ops)), (name, ref, ours)
        # same magnitudes, same random sign
        ref_mags = sorted({round(m, 4) for t, m in seen if t == name})
        our_mags = sorted({round(m, 4) for m in mags[ops == OP[name]].tolist()})
        assert our_mags == ref_mags, (name, our_mags, ref_mags)
        if len(our_mags) == 2:
            assert within((mags[ops == OP[name]] < 0).float().mean().item(), 0.5, int((ops == OP[name]).sum()))


def test_autoaugment_op_frequencies_match_policy():
    cfg = cfg_(augment="autoaugment")
    policies = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    record = []
    batched(cfg, images(4096), batch=256, record=record)
    ops = torch.cat([r["ops"] for r in record])
    n = len(ops)
    for slot in range(2):
        expected = dict.fromkeys(OPS, 0.0)
        for policy in policies:
            name, prob, _ = policy[slot]
            expected[name] += prob / len(policies)
            expected["Identity"] += (1 - prob) / len(policies)
        for name, p in expected.items():
            assert within((ops[:, slot] == OP[name]).float().mean().item(), p, n), (slot, name)


def test_independent_parameters_per_image():
    x = images(1).expand(128, 3, 32, 32).contiguous()  # one image, 128 times
    aug = BatchAugment(cfg_(augment="full"), MEAN, STD)
    out = aug(x)
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(128) * 1e9).min() > 0  # no two copies augmented alike
    p = aug.last_params
    assert len(set(map(tuple, p["crop"].tolist()))) > 40
    assert 20 < int(p["flip"].sum()) < 108
    assert p["jitter"].unique(dim=0).shape[0] == 128 and p["rotation"].unique().numel() == 128
    assert p["ops"][:, 0].unique().numel() >= 10 and not torch.equal(p["ops"][:, 0], p["ops"][:, 1])
    assert 0 < int(p["erasing"][:, 0].sum()) < 128


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
        assert xb.is_contiguous(memory_format=torch.channels_last)  # the default memory format, CPU too
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
