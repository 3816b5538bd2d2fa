"""lib.batch_augment and lib.policies: the batched pipeline against torchvision, op by op and in distribution.

Each op is compared with torchvision's public kernel; then many images go through both pipelines and what was
done to them (decoded from crafted inputs, or read from the sampled parameters) is compared with the
distribution torchvision samples from. The op tables are checked against hand-computed values from the papers,
and against torchvision's private tables where the installed version still has them. Synthetic data only.
"""
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import lib.batch_augment as batch_augment
from augment_helpers import IDENTITY, MEAN, STD, batched, cfg_, images, per_sample, same_mean, within
from lib.augment import BatchMix
from lib.batch_augment import BatchAugment, apply_policy_op, color_jitter, rotation_matrix, warp
from lib.policies import (AUTOAUGMENT_BINS, AUTOAUGMENT_CIFAR10, OP, OPS, RANDAUGMENT_BINS, RANDAUGMENT_OPS,
                          SIGNED_MAX, magnitude)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # statistical checks use 5-sigma bounds; a fixed seed keeps them from ever flaking


@pytest.fixture(params=["indexed", "masked"])
def selection(request, monkeypatch):
    """Run the test with each way of applying an op to the images that drew it (CPU default: indexed)."""
    monkeypatch.setattr(batch_augment, "masked_selection", lambda device: request.param == "masked")
    return request.param


def test_bad_batch_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(cfg_(), MEAN, STD)(torch.rand(2, 3, 32, 32))


# ----------------------------------------------------------------------------------------------------
# The op tables: hand-checked values, and torchvision's own tables where it still exposes them
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, bin, expected", [
    # RandAugment, magnitude 9 of 0..30 (the report's): linear ops at 9/30 of their maximum
    ("ShearX", 9, 0.09), ("ShearY", 9, 0.09), ("Rotate", 9, 9.0), ("Brightness", 9, 0.27), ("Color", 9, 0.27),
    ("Contrast", 9, 0.27), ("Sharpness", 9, 0.27),
    ("TranslateX", 9, 4.3505), ("TranslateY", 9, 4.3505),  # 150/331 of 32 px = 14.50 px at the top; 9/30 of it
    ("Posterize", 9, 7), ("Solarize", 9, 0.7),  # 8 - round(9 / 7.5) bits; threshold 1 - 9/30
    ("Rotate", 30, 30.0), ("Posterize", 30, 4), ("Solarize", 30, 0.0), ("Posterize", 0, 8), ("Solarize", 0, 1.0),
    ("Identity", 9, 0.0), ("AutoContrast", 9, 0.0), ("Equalize", 9, 0.0), ("Invert", 9, 0.0),
])
def test_randaugment_magnitudes_hand_checked(name, bin, expected):
    assert magnitude(name, bin, RANDAUGMENT_BINS, 32, 32) == pytest.approx(expected, abs=1e-4)


def test_autoaugment_cifar10_policy_hand_checked():
    """AutoAugment's CIFAR-10 policy (Cubuk et al. 2018, appendix): 25 sub-policies, magnitudes on 10 bins."""
    assert len(AUTOAUGMENT_CIFAR10) == 25 and all(len(sub) == 2 for sub in AUTOAUGMENT_CIFAR10)
    assert AUTOAUGMENT_CIFAR10[0] == (("Invert", 0.1, None), ("Contrast", 0.2, 6))
    assert AUTOAUGMENT_CIFAR10[1] == (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9))
    assert AUTOAUGMENT_CIFAR10[-1] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None))
    assert {name for sub in AUTOAUGMENT_CIFAR10 for name, _, _ in sub} == set(OPS) - {"Identity", "ShearX"}
    assert magnitude("Rotate", 2, AUTOAUGMENT_BINS, 32, 32) == pytest.approx(30 * 2 / 9)  # degrees
    assert magnitude("TranslateX", 9, AUTOAUGMENT_BINS, 32, 32) == pytest.approx(14.5015, abs=1e-4)  # px, top bin
    assert magnitude("Posterize", 7, AUTOAUGMENT_BINS, 32, 32) == 5  # 8 - round(7 / 2.25) bits
    assert magnitude("Solarize", 5, AUTOAUGMENT_BINS, 32, 32) == pytest.approx(1 - 5 / 9)


def test_op_tables_match_torchvisions_where_it_exposes_them():
    """Our tables are the facts torchvision's private ones hold; newer versions may drop those: skip, not fail."""
    rand_space = getattr(v2.RandAugment, "_AUGMENTATION_SPACE", None)
    auto_space = getattr(v2.AutoAugment, "_AUGMENTATION_SPACE", None)
    policies = getattr(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10), "_policies", None)
    if not (isinstance(rand_space, dict) and isinstance(auto_space, dict) and policies is not None):
        pytest.skip("this torchvision no longer exposes its RandAugment/AutoAugment tables")
    assert tuple(rand_space) == RANDAUGMENT_OPS and set(auto_space) == set(OPS) - {"Identity"}
    for space, bins in ((rand_space, RANDAUGMENT_BINS), (auto_space, AUTOAUGMENT_BINS)):
        for name, (fn, signed) in space.items():
            assert signed == (name in SIGNED_MAX), name
            for H, W in ((32, 32), (16, 24)):
                values = fn(bins, H, W)
                ours = [magnitude(name, b, bins, H, W) for b in range(bins)]
                assert ours == ([0.0] * bins if values is None else [float(v) for v in values]), (name, H, W)
    assert [tuple(map(tuple, sub)) for sub in policies] == list(AUTOAUGMENT_CIFAR10)


# ----------------------------------------------------------------------------------------------------
# Each batched op against torchvision's own kernel
# ----------------------------------------------------------------------------------------------------
NEAREST = v2.InterpolationMode.NEAREST
# Each policy op by torchvision's public kernels, as RandAugment/AutoAugment call them (fill 0, nearest)
REFERENCE = {
    "Identity": lambda im, m: im,
    "ShearX": lambda im, m: F.affine(im, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                                     shear=[math.degrees(math.atan(m)), 0.0], interpolation=NEAREST),
    "ShearY": lambda im, m: F.affine(im, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                                     shear=[0.0, math.degrees(math.atan(m))], interpolation=NEAREST),
    "TranslateX": lambda im, m: F.affine(im, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST),
    "TranslateY": lambda im, m: F.affine(im, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST),
    "Rotate": lambda im, m: F.rotate(im, m, interpolation=NEAREST),
    "Brightness": lambda im, m: F.adjust_brightness(im, 1 + m),
    "Color": lambda im, m: F.adjust_saturation(im, 1 + m),
    "Contrast": lambda im, m: F.adjust_contrast(im, 1 + m),
    "Sharpness": lambda im, m: F.adjust_sharpness(im, 1 + m),
    "Posterize": lambda im, m: F.posterize(im, int(m)),
    "Solarize": lambda im, m: F.solarize(im, 255 * m),
    "AutoContrast": lambda im, m: F.autocontrast(im),
    "Equalize": lambda im, m: F.equalize(im),
    "Invert": lambda im, m: F.invert(im),
}
POLICY_CASES = [("ShearX", 0.09), ("ShearX", -0.3), ("ShearY", 0.09), ("ShearY", -0.09), ("TranslateX", 4.35),
                ("TranslateX", -4.35), ("TranslateY", 4.35), ("TranslateY", -14.0), ("Rotate", 9.0),
                ("Rotate", -30.0), ("Brightness", 0.27), ("Brightness", -0.27), ("Color", 0.27), ("Color", -0.9),
                ("Contrast", 0.27), ("Contrast", -0.27), ("Sharpness", 0.27), ("Sharpness", -0.27),
                ("Posterize", 7.0), ("Posterize", 4.0), ("Solarize", 0.7), ("Solarize", 0.1),
                ("AutoContrast", 0.0), ("Equalize", 0.0), ("Invert", 0.0), ("Identity", 0.0)]


def test_policy_ops_match_torchvision(selection):
    x = images(8, seed=1)
    x[0, :, :16] = 40  # a flat region and a low-contrast channel for AutoContrast/Equalize edge cases
    for name, mag in POLICY_CASES:
        ref = torch.stack([REFERENCE[name](img, mag) for img in x]).float()
        out = apply_policy_op(F.to_dtype(x, torch.float32, scale=True), torch.full((8,), OP[name]),
                              torch.full((8,), mag)) * 255
        err = (out - ref).abs().max().item()
        # geometry is pixel-exact; colour ops differ only by torchvision's uint8 arithmetic (it floors the grey
        # level and truncates the blend: up to 2 levels), which the batched path, staying float, skips
        assert err <= (1e-3 if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") else 2.01), \
            (name, mag, err)


def test_rotation_matches_torchvision_rotate():
    x = F.to_dtype(images(4), torch.float32, scale=True)
    for angle in (7.3, -10.0):
        ours = warp(x, rotation_matrix(torch.full((4,), angle)))
        theirs = F.rotate(x, angle, interpolation=NEAREST)
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
    out = color_jitter(xf, torch.tensor([[b, c, s, h]] * 6), torch.tensor([order] * 6))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_cuda_path_has_no_data_dependent_ops():
    # Off the CPU ops are selected with torch.where. On the meta device any .item(), nonzero() or boolean indexing
    # (a host sync on CUDA) would raise
    for augment in ("full", "crop,flip,jitter,rotation,autoaugment,erasing"):
        aug = BatchAugment(cfg_(augment=augment), MEAN, STD)
        out = aug(torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta"))
        assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    mix = BatchMix(cfg_(mix_prob=1.0))
    for _ in range(6):  # both MixUp and CutMix
        _, soft = mix(out, torch.empty(8, dtype=torch.long, device="meta"))
        assert soft.shape == (8, 10)


def test_both_selections_give_the_same_images(monkeypatch):
    x = images(48, seed=3)
    cfg = cfg_(augment="crop,flip,jitter,rotation,randaugment,erasing", randaugment_ops=3)
    outs = []
    for masked in (False, True):
        monkeypatch.setattr(batch_augment, "masked_selection", lambda device: masked)
        torch.manual_seed(5)
        outs.append(BatchAugment(cfg, MEAN, STD)(x))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def test_apply_is_deterministic_given_the_parameters():
    x = images(32, seed=4)
    aug = BatchAugment(cfg_(augment="full"), MEAN, STD)
    params = aug.sample_params(x)
    assert torch.equal(aug.apply(x, params), aug.apply(x, params))
    torch.manual_seed(3)
    out = aug(x)
    torch.manual_seed(3)
    assert torch.equal(aug.apply(x, aug.sample_params(x)), out)  # calling it = sampling, then applying


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


# RandAugment at magnitude 9 of 30 on 16 x 16 images, by hand (translate: 150/331 of 16 px, 9/30 of it)
RANDAUGMENT_9_16PX = {"Identity": 0.0, "ShearX": 0.09, "ShearY": 0.09, "TranslateX": 2.1752, "TranslateY": 2.1752,
                      "Rotate": 9.0, "Brightness": 0.27, "Color": 0.27, "Contrast": 0.27, "Sharpness": 0.27,
                      "Posterize": 7.0, "Solarize": 0.7, "AutoContrast": 0.0, "Equalize": 0.0}


def check_randaugment_draws(ops: list, mags: list) -> None:
    """Each slot: one of the 14 ops uniformly, at magnitude 9, a signed op's magnitude negated half the time."""
    assert set(ops) == set(RANDAUGMENT_9_16PX)  # never Invert
    for name, m in RANDAUGMENT_9_16PX.items():
        drawn = [v for op, v in zip(ops, mags) if op == name]
        assert within(len(drawn) / len(ops), 1 / 14, len(ops)), name
        signs = [-1, 1] if name in SIGNED_MAX else [1]
        assert sorted({round(v, 4) for v in drawn}) == sorted({round(s * m, 4) for s in signs}), name
        if name in SIGNED_MAX:
            assert within(sum(v < 0 for v in drawn) / len(drawn), 0.5, len(drawn)), name


def test_randaugment_op_frequencies_and_magnitudes():
    cfg = cfg_(augment="randaugment", randaugment_ops=2, randaugment_magnitude=9)
    record = []
    batched(cfg, images(2048)[..., :16, :16], batch=128, record=record)
    assert record[0]["ops"].shape == (128, 2)
    ops = torch.cat([r["ops"] for r in record]).flatten().tolist()
    mags = torch.cat([r["magnitudes"] for r in record]).flatten().tolist()
    check_randaugment_draws([OPS[i] for i in ops], mags)


def test_torchvision_randaugment_draws_the_same(monkeypatch):
    """The per-sample path's draws, spied on torchvision's private op hook (skipped where it is gone), pass the
    same checks as the batched path's."""
    original = getattr(v2.RandAugment, "_apply_image_or_video_transform", None)
    if original is None:
        pytest.skip("this torchvision has no RandAugment._apply_image_or_video_transform to spy on")
    seen = []

    def spy(self, image, transform_id, magnitude, **kw):
        seen.append((transform_id, magnitude))
        return original(self, image, transform_id, magnitude, **kw)

    monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", spy)
    per_sample(cfg_(augment="randaugment", randaugment_ops=2, randaugment_magnitude=9), images(700)[..., :16, :16])
    check_randaugment_draws([t for t, _ in seen], [m for _, m in seen])


def test_autoaugment_op_frequencies_match_policy():
    cfg = cfg_(augment="autoaugment")
    record = []
    batched(cfg, images(4096), batch=256, record=record)
    ops = torch.cat([r["ops"] for r in record])
    n = len(ops)
    for slot in range(2):
        expected = dict.fromkeys(OPS, 0.0)
        for policy in AUTOAUGMENT_CIFAR10:
            name, prob, _ = policy[slot]
            expected[name] += prob / len(AUTOAUGMENT_CIFAR10)
            expected["Identity"] += (1 - prob) / len(AUTOAUGMENT_CIFAR10)
        for name, p in expected.items():
            assert within((ops[:, slot] == OP[name]).float().mean().item(), p, n), (slot, name)


def test_independent_parameters_per_image():
    x = images(1).expand(128, 3, 32, 32).contiguous()  # one image, 128 times
    aug = BatchAugment(cfg_(augment="full"), MEAN, STD)
    p = aug.sample_params(x)
    flat = aug.apply(x, p).flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(128) * 1e9).min() > 0  # no two copies augmented alike
    assert len(set(map(tuple, p["crop"].tolist()))) > 40
    assert 20 < int(p["flip"].sum()) < 108
    assert p["jitter"].unique(dim=0).shape[0] == 128 and p["rotation"].unique().numel() == 128
    assert p["ops"][:, 0].unique().numel() >= 10 and not torch.equal(p["ops"][:, 0], p["ops"][:, 1])
    assert 0 < int(p["erasing"][:, 0].sum()) < 128




def test_random_erasing_values_and_max_area_match():
    """erasing_value "random" (v2.RandomErasing(value="random")): each erased value N(0, 1), after normalising;
    erasing_max_area 0.1 (the base-45 notebook's scale (0.02, 0.1)) bounds the box."""
    n, p = 1600, 0.5
    x = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)  # 200/255 everywhere: any other value was erased
    cfg = cfg_(augment="erasing", erasing_prob=p, erasing_value="random", erasing_max_area=0.1)
    areas, values = {}, {}
    for name, out in (("per-sample", per_sample(cfg, x)), ("batched", batched(cfg, x))):
        box = ((out - 200 / 255).abs() > 1e-4).all(1)  # all three channels redrawn: N(0, 1) never lands there
        frac = box.float().mean((1, 2))
        erased = frac > 0
        assert within(erased.float().mean().item(), p, n), name
        areas[name] = frac[erased]
        # scale (0.02, 0.1) of the area, after torchvision's rounding of the box sides
        assert areas[name].min() >= 0.015 and areas[name].max() <= 0.115, name
        values[name] = out.permute(0, 2, 3, 1)[box].flatten()
        m, s = values[name].mean().item(), values[name].std().item()
        assert abs(m) < 5 / math.sqrt(len(values[name])) and abs(s - 1) < 0.02, (name, m, s)
    assert same_mean(*areas.values())
    # values are drawn per pixel and channel: neighbours and channels uncorrelated
    v = values["batched"].view(-1, 3)
    assert abs(torch.corrcoef(v.T)[0, 1]) < 0.05


# ----------------------------------------------------------------------------------------------------
# The device loader: a chunk of thousands of images per BatchAugment call, batches sliced from it
# ----------------------------------------------------------------------------------------------------
def index_images(n):
    """Image i is flat grey i % 250 with label i % 10: the output without augmentation says which it was."""
    values = torch.arange(n) % 250
    return values.view(n, 1, 1, 1).expand(n, 32, 32, 3).to(torch.uint8).numpy(), (torch.arange(n) % 10).numpy()


def test_chunked_epoch_takes_every_image_at_most_once():
    from lib.augment import make_train_loader
    x, y = index_images(1000)
    cfg = cfg_(augment="none", mix_prob=0.0, batch_size=128)
    loader = make_train_loader(cfg, x, y, *IDENTITY, "cpu", "device")
    loader.chunk_images = 300  # chunks of 2 batches: 256, 256, 256, then the last 128 of 896 (drop_last)
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 7 and all(xb.shape == (128, 3, 32, 32) for xb, _ in batches)
    seen = torch.cat([(xb[:, 0, 0, 0] * 255).round().long() for xb, _ in batches])
    labels = torch.cat([soft.argmax(1) for _, soft in batches])
    assert len(seen) == 896 and torch.equal(labels, seen % 10)  # each image with its own label
    assert torch.bincount(seen, minlength=250).max() <= 4  # 1000 images: each value 4 times, none drawn twice


def test_chunked_loader_draws_every_image_its_own_parameters():
    """Through the device loader, chunks spanning several batches: crop offsets uniform over -4..4, flips at 0.5,
    and 256 copies of one image all augmented differently."""
    from lib.augment import make_train_loader
    n = 1800
    x = position_image().permute(1, 2, 0).expand(n, 32, 32, 3).contiguous().numpy()
    cfg = cfg_(augment="crop,flip", mix_prob=0.0, batch_size=100)
    loader = make_train_loader(cfg, x, torch.zeros(n, dtype=torch.long).numpy(), *IDENTITY, "cpu", "device")
    loader.chunk_images = 600  # 6 batches a chunk, 3 chunks
    out = torch.cat([xb for xb, _ in loader])
    dy, dx, flipped = decode_crop_flip(out)
    assert within(flipped.float().mean().item(), 0.5, n)
    for shift in (dy, dx):
        for v in range(-4, 5):
            assert within((shift == v).float().mean().item(), 1 / 9, n), v
    same = images(1).permute(0, 2, 3, 1).expand(256, 32, 32, 3).contiguous().numpy()
    loader = make_train_loader(cfg_(augment="full", mix_prob=0.0, batch_size=64), same,
                               torch.zeros(256, dtype=torch.long).numpy(), MEAN, STD, "cpu", "device")
    loader.chunk_images = 256
    flat = torch.cat([xb for xb, _ in loader]).flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(256) * 1e9).min() > 0


class AtenOps(TorchDispatchMode):
    """Counts every aten op dispatched inside it (what a GPU would launch, views and host-side scalars too)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_augmentation_ops_per_step_are_at_most_5_percent_of_the_model_step():
    """The CUDA path's launch count, counted on the CPU: the device loader on PyTorch's meta device (the same ops as
    on CUDA: masked selection, the CUDA chunk size; nothing computed), against one bf16 training step of
    robust_resnet64 (op count independent of width and batch: narrow and small here)."""
    from lib.augment import make_train_loader
    from lib.models import build_model
    from lib.recipe import make_criterion, make_optimizer, make_scheduler, train_step

    cfg = cfg_(augment="crop,flip,randaugment", mix_prob=1.0, batch_size=128, channels_last=True)
    model = build_model("robust_resnet64", base_channels=4).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler, criterion = make_scheduler(cfg, optimizer, 10), make_criterion(cfg)
    xb = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    soft = torch.softmax(torch.randn(4, 10), 1)
    train_step(model, xb, soft, optimizer, scheduler, criterion, None, torch.bfloat16)  # optimizer state made
    with AtenOps() as step_ops:
        train_step(model, xb, soft, optimizer, scheduler, criterion, None, torch.bfloat16)
    assert step_ops.count > 1000  # ~1,200: 62 weight layers forward and backward, BN, casts, the optimizer

    n = 16_384  # one CUDA chunk
    loader = make_train_loader(cfg, np.zeros((n, 32, 32, 3), np.uint8), np.zeros(n, np.int64), MEAN, STD, "meta",
                               "device")
    steps = len(loader)
    with AtenOps() as loader_ops:
        assert sum(1 for _ in loader) == steps == 128
    per_step = loader_ops.count / steps
    assert per_step <= 0.05 * step_ops.count, (per_step, step_ops.count)
    # one batch at a time (the loader before chunks) would have cost ~600 a step
    loader.chunk_images = 128
    with AtenOps() as per_batch_ops:
        for _, _ in zip(range(4), loader):
            pass
    assert per_batch_ops.count / 4 > 0.4 * step_ops.count
