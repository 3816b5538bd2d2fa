"""lib.batch_augment against independent facts, where test_batch_augment.py's comparisons leave a mistake unseen.

Each test names the fact it checks: torchvision's kernels and private tables as the reference implementation
(``_get_inverse_affine_matrix``, ``F.posterize``/``F.autocontrast``/``F.rotate``, ``v2.RandomErasing``'s box
sampling, AutoAugment's ``_policies``), or values worked out by hand. Images here are built to expose what random
uint8 images hide: narrow channel ranges (autocontrast is the identity on a channel spanning 0..255), non-square
sizes (height and width swapped), exact multiples of 90 degrees (nearest-neighbour rotation exact, so any extra or
missing rotation shows). Every random draw is seeded. Synthetic data only.
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from augment_helpers import IDENTITY, images
from lib.batch_augment import BatchAugment, apply_policy_op, inverse_affine, masked_selection, policy_table
from lib.policies import AUTOAUGMENT_BINS, OP, AugmentSpec

NEAREST = v2.InterpolationMode.NEAREST


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def to_float(x):
    return F.to_dtype(x, torch.float32, scale=True)


def draws(spec, n, h=32, w=32):
    """sample_params for n images of h x w (only the shape is read: a broadcast view, no memory)."""
    return BatchAugment(spec, *IDENTITY).sample_params(torch.zeros(1, 3, h, w, dtype=torch.uint8).expand(n, 3, h, w))


# ----------------------------------------------------------------------------------------------------
# Small facts: the selection policy, the input check
# ----------------------------------------------------------------------------------------------------
def test_masked_selection_on_cuda_indexed_on_cpu():
    """The documented policy: torch.where (no host sync) off the CPU, boolean indexing on it. A device object needs
    no GPU to exist."""
    assert masked_selection(torch.device("cpu")) is False
    assert masked_selection(torch.device("cuda")) is True
    assert masked_selection(torch.device("cuda", 0)) is True


def test_four_channel_uint8_batch_is_refused():
    """Only uint8 (N, 3, H, W) is accepted: right dtype and rank but 4 channels (RGBA) is refused too."""
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(AugmentSpec(), *IDENTITY)(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


def test_one_instance_serves_two_devices_with_draws_and_constants_on_each():
    """sample_params draws "one row per image, on its device" and the instance keeps its tables and normalising
    constants per device: one BatchAugment called on a meta-device batch (PyTorch's stand-in for CUDA: same ops,
    nothing computed), then on a CPU batch. Every parameter lies on the batch's own device, and the CPU batch is
    normalised with the given mean/std: (200/255 - 0.5) / 0.25 by hand. (A CPU op reading a meta tensor silently
    does nothing, so constants left on the wrong device would show as an unnormalised batch.)"""
    spec = AugmentSpec(crop=True, flip=True, jitter=0.4, rotation=15.0, policy="randaugment", num_ops=2,
                       erasing_prob=0.5, erasing_random=True)
    aug = BatchAugment(spec, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    meta = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    p = aug.sample_params(meta)
    assert set(p) == {"flip", "crop", "jitter", "jitter_order", "ops", "magnitudes", "rotation", "erasing",
                      "erasing_noise"}
    assert {k: v.device.type for k, v in p.items()} == dict.fromkeys(p, "meta")
    assert aug.apply(meta, p).device.type == "meta"
    x = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    p = aug.sample_params(x)
    assert {k: v.device.type for k, v in p.items()} == dict.fromkeys(p, "cpu")
    torch.testing.assert_close(aug.apply(x, {}), torch.full((8, 3, 32, 32), (200 / 255 - 0.5) / 0.25))


class HostReads(TorchDispatchMode):
    """Records every aten op whose result is on the meta device but which reads a CPU tensor that is not a 0-dim
    scalar. On CUDA each would be a host-to-device copy (pageable: a host sync) or a device-mismatch error."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "meta" for t in outs + tensors) and \
                any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_a_call_after_the_first_reads_nothing_from_the_host(policy):
    """The module's contract for the GPU: "a host-to-device copy per batch would be a host sync", so every random
    number is drawn on the batch's device and the constant tensors (policy tables, mean/std) are copied once per
    device. On the meta device (CUDA's ops, nothing computed) the second call of an instance with every op on,
    random-valued erasing included, dispatches no op that reads a non-scalar CPU tensor."""
    spec = AugmentSpec(crop=True, flip=True, jitter=0.4, rotation=15.0, policy=policy, num_ops=2, erasing_prob=0.5,
                       erasing_random=True)
    aug = BatchAugment(spec, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.empty(16, 3, 32, 32, dtype=torch.uint8, device="meta")
    aug(x)  # the first call may copy its constants over
    with HostReads() as reads:
        out = aug(x)
    assert out.device.type == "meta" and out.shape == (16, 3, 32, 32)
    assert reads.ops == []


# ----------------------------------------------------------------------------------------------------
# Colour ops against torchvision's kernels, exactly
# ----------------------------------------------------------------------------------------------------
def test_posterize_per_image_bits_match_torchvision_exactly():
    """Each image keeps its own number of top bits, as F.posterize(uint8 image, bits): exact, not within a level.
    By hand: 255 with 4 bits -> 240, 200 with 2 bits -> 192."""
    x = images(8, seed=11)
    x[0, 0, 0, 0], x[6, 0, 0, 0] = 255, 200
    bits = torch.tensor([4, 1, 2, 3, 5, 6, 2, 8])
    out = apply_policy_op(to_float(x), torch.full((8,), OP["Posterize"]), bits.float()) * 255
    ref = torch.stack([F.posterize(img, int(b)) for img, b in zip(x, bits)]).float()
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=0)
    assert out[0, 0, 0, 0].item() == pytest.approx(240, abs=1e-3)
    assert out[6, 0, 0, 0].item() == pytest.approx(192, abs=1e-3)


def test_autocontrast_stretches_each_image_and_channel_like_torchvision():
    """F.autocontrast per image: each channel of each image stretched from its own min..max to 0..1, a flat
    channel left as it is. Channels span narrow ranges that differ between images and channels (random uint8
    images span 0..255, where autocontrast does nothing)."""
    g = torch.Generator().manual_seed(12)
    ranges = [[(50, 150), (60, 120), (70, 200)], [(10, 40), (100, 101), (0, 30)], [(200, 255), (5, 90), (90, 90)]]
    x = torch.empty(3, 3, 16, 16, dtype=torch.uint8)
    for i, chans in enumerate(ranges):
        for c, (lo, hi) in enumerate(chans):
            v = torch.randint(lo, hi + 1, (16, 16), generator=g)
            v[0, 0], v[-1, -1] = lo, hi  # both ends reached
            x[i, c] = v
    xf = to_float(x)
    out = apply_policy_op(xf, torch.full((3,), OP["AutoContrast"]), torch.zeros(3))
    ref = torch.stack([F.autocontrast(img) for img in xf])  # torchvision on float images: no uint8 truncation
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(out[2, 2], xf[2, 2])  # the flat channel (90 everywhere) unchanged
    assert out[0, 0].min() == 0 and out[0, 0].max() == 1  # 50 -> 0, 150 -> 1
    assert out[1, 1].unique().tolist() == [0.0, 1.0]  # 100 -> 0, 101 -> 1


# ----------------------------------------------------------------------------------------------------
# Geometry against torchvision's matrix and kernels
# ----------------------------------------------------------------------------------------------------
def _torchvision_inverse_affine():
    try:
        from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix
    except ImportError:
        try:
            from torchvision.transforms.functional import _get_inverse_affine_matrix
        except ImportError:
            pytest.skip("this torchvision has no _get_inverse_affine_matrix")
    return _get_inverse_affine_matrix


def test_inverse_affine_matches_torchvisions_matrix_for_general_arguments():
    """torchvision's _get_inverse_affine_matrix(center, angle, translate, scale=1, shear) (angles in degrees) with
    rotation, both shears, centre and translation all non-zero at once; inverse_affine takes the rotation and the y
    shear in radians and tan of the x shear. The third row is that of a homogeneous affine matrix, [0, 0, 1]."""
    reference = _torchvision_inverse_affine()
    g = torch.Generator().manual_seed(13)
    n = 64

    def uniform(lo, hi):
        return torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=g)

    angle, shear_x, shear_y = uniform(-180, 180), uniform(-40, 40), uniform(-40, 40)
    cx, cy, tx, ty = uniform(-20, 20), uniform(-20, 20), uniform(-10, 10), uniform(-10, 10)
    m = inverse_affine(torch.deg2rad(angle).float(), torch.tan(torch.deg2rad(shear_x)).float(),
                       torch.deg2rad(shear_y).float(), cx.float(), cy.float(), tx.float(), ty.float())
    assert m.shape == (n, 3, 3)
    ref = torch.tensor([reference([cx[i].item(), cy[i].item()], angle[i].item(), [tx[i].item(), ty[i].item()], 1.0,
                                  [shear_x[i].item(), shear_y[i].item()]) for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(m[:, :2].reshape(n, 6).double(), ref, atol=2e-4, rtol=1e-5)
    assert torch.equal(m[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(n, 3))


@pytest.mark.parametrize("name, mag", [("ShearX", 0.09), ("ShearX", -0.3), ("ShearY", 0.09), ("ShearY", -0.3)])
def test_shear_on_non_square_images_matches_torchvision(name, mag):
    """Shear about the top-left corner (F.affine center=[0, 0]) on 24 x 40 images: height and width not
    interchangeable (CIFAR's square images cannot tell them apart). Nearest neighbour: pixel-exact."""
    x = to_float(torch.randint(0, 256, (4, 3, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(14)))
    shear = [math.degrees(math.atan(mag)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(mag))]
    ref = F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0], shear=shear, interpolation=NEAREST)
    out = apply_policy_op(x.clone(), torch.full((4,), OP[name]), torch.full((4,), mag))
    assert (out != ref).float().mean() <= 1e-3, (out != ref).float().mean()


def test_rotation_comes_once_and_before_every_images_first_policy_op():
    """RandomRotation then the policy (torchvision's order, each a separate transform): each image rotated exactly
    once by its own angle, then its slot-0 op, then its slot-1 op, whatever kind the op is. Multiples of 90 degrees
    on square images make nearest-neighbour resampling exact: any extra, missing or misplaced rotation shows."""
    x = images(8, seed=15)
    xf = to_float(x)
    angles = torch.tensor([90.0, -90.0, 180.0, 90.0, 90.0, -90.0, 90.0, 180.0])
    slot0 = [("Identity", 0.0), ("Invert", 0.0), ("Rotate", 90.0), ("TranslateX", 5.0), ("Solarize", 0.5),
             ("Posterize", 3.0), ("Invert", 0.0), ("TranslateY", -7.0)]
    reference = {"Identity": lambda im, m: im, "Invert": lambda im, m: F.invert(im),
                 "Rotate": lambda im, m: F.rotate(im, m, interpolation=NEAREST),
                 "TranslateX": lambda im, m: F.affine(im, angle=0.0, translate=[int(m), 0], scale=1.0,
                                                      shear=[0.0, 0.0], interpolation=NEAREST),
                 "TranslateY": lambda im, m: F.affine(im, angle=0.0, translate=[0, int(m)], scale=1.0,
                                                      shear=[0.0, 0.0], interpolation=NEAREST),
                 "Solarize": lambda im, m: F.solarize(im, m),
                 # rotated pixels stay k/255: F.posterize (uint8 only) through a lossless round trip
                 "Posterize": lambda im, m: to_float(F.posterize(F.to_dtype(im, torch.uint8, scale=True), int(m)))}
    rotated = torch.stack([F.rotate(im, float(a), interpolation=NEAREST) for im, a in zip(xf, angles)])
    spec = AugmentSpec(rotation=90.0, policy="randaugment", num_ops=2)
    aug = BatchAugment(spec, *IDENTITY)

    def run(ops):
        p = {"rotation": angles.clone(), "ops": torch.tensor([[OP[o] for o, _ in slots] for slots in ops]),
             "magnitudes": torch.tensor([[m for _, m in slots] for slots in ops])}
        return aug.apply(x, p)

    for second in ("Identity", "Invert"):  # num_ops = 2: the rotation belongs to slot 0 only
        out = run([[op, (second, 0.0)] for op in slot0])
        for i, (name, mag) in enumerate(slot0):
            im = reference[name](rotated[i], mag)
            if second == "Invert":
                im = F.invert(im)
            torch.testing.assert_close(out[i], im, atol=1e-5, rtol=0, msg=f"{name} then {second}")
    # one slot: Identity everywhere leaves each image rotated, once
    one = BatchAugment(AugmentSpec(rotation=90.0, policy="randaugment", num_ops=1), *IDENTITY)
    out = one.apply(x, {"rotation": angles.clone(), "ops": torch.full((8, 1), OP["Identity"]),
                        "magnitudes": torch.zeros(8, 1)})
    torch.testing.assert_close(out, rotated, atol=1e-5, rtol=0)
    # rotate with zero fill, then invert: a 45-degree turn leaves the corners empty, so they end up white
    out = one.apply(x, {"rotation": torch.full((8,), 45.0), "ops": torch.full((8, 1), OP["Invert"]),
                        "magnitudes": torch.zeros(8, 1)})
    assert (out[:, :, 0, 0] == 1).all() and (out[:, :, -1, -1] == 1).all()


# ----------------------------------------------------------------------------------------------------
# The policy tables and the parameters drawn
# ----------------------------------------------------------------------------------------------------
def test_autoaugment_table_matches_torchvisions_policy_and_magnitudes():
    """policy_table for AutoAugment on 24 x 40 images: each sub-policy's ops, probabilities and unsigned magnitudes
    as torchvision's v2.AutoAugment(CIFAR10) computes them (its _policies and _AUGMENTATION_SPACE[name][0](10, H, W)
    [bin], 0 for ops without a magnitude). By hand too: sub-policy 1 is Rotate 0.7 at bin 2 (30 * 2/9 degrees),
    TranslateX 0.3 at bin 9 (150/331 of the width)."""
    H, W = 24, 40
    t = policy_table(AugmentSpec(policy="autoaugment"), H, W, torch.device("cpu"))
    assert t["op"][1].tolist() == [OP["Rotate"], OP["TranslateX"]]
    assert t["prob"][1].tolist() == pytest.approx([0.7, 0.3])
    assert t["mag"][1].tolist() == pytest.approx([30 * 2 / 9, 150 / 331 * W], rel=1e-6)
    auto = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    space, policies = getattr(auto, "_AUGMENTATION_SPACE", None), getattr(auto, "_policies", None)
    if not (isinstance(space, dict) and policies is not None):
        pytest.skip("this torchvision no longer exposes AutoAugment's tables")
    ops, probs, mags = [], [], []
    for sub in policies:
        ops.append([OP[name] for name, _, _ in sub])
        probs.append([prob for _, prob, _ in sub])
        row = []
        for name, _, b in sub:
            values = space[name][0](AUTOAUGMENT_BINS, H, W)
            row.append(0.0 if values is None or b is None else float(values[b]))
        mags.append(row)
    assert t["op"].tolist() == ops
    torch.testing.assert_close(t["prob"], torch.tensor(probs))
    torch.testing.assert_close(t["mag"], torch.tensor(mags), rtol=1e-6, atol=1e-7)
    assert any(m > 0 for row in mags for m in row)


def test_translate_magnitude_follows_each_calls_image_size():
    """One BatchAugment called on 32 x 32, then on 64 x 64 images: RandAugment's translation at the top bin is
    150/331 of the image side (torchvision's RandAugment table), so the second call's is 150/331 * 64 = 29.0 px,
    not the 14.5 px of the first call's size."""
    aug = BatchAugment(AugmentSpec(policy="randaugment", num_ops=2, magnitude=30), *IDENTITY)
    for side in (32, 64, 32):
        p = aug.sample_params(torch.zeros(1, 3, side, side, dtype=torch.uint8).expand(512, 3, side, side))
        translate = p["magnitudes"][(p["ops"] == OP["TranslateX"]) | (p["ops"] == OP["TranslateY"])]
        assert len(translate) > 20
        assert translate.abs().tolist() == pytest.approx([150 / 331 * side] * len(translate), rel=1e-6), side


def test_hue_shift_is_uniform_on_a_quarter_of_the_jitter():
    """v2.ColorJitter(hue=j/4) (lib.augment.train_transform) draws the hue shift uniformly on [-j/4, j/4]: over
    20,000 draws every shift is inside and both ends are approached within 2% of the range's half-width; the
    mean is near 0."""
    j = 0.4
    hue = draws(AugmentSpec(jitter=j), 20_000, 1, 1)["jitter"][:, 3]
    assert hue.min() >= -j / 4 and hue.max() <= j / 4
    assert hue.min() < -0.98 * j / 4 and hue.max() > 0.98 * j / 4
    assert abs(hue.mean().item()) < 5 * (j / 4) / math.sqrt(3 * 20_000)


def test_one_degree_rotation_is_drawn():
    """rotation_degrees 1 (v2.RandomRotation(1)): every image gets an angle in [-1, 1], not none."""
    p = draws(AugmentSpec(rotation=1.0), 2000, 8, 8)
    assert "rotation" in p
    r = p["rotation"]
    assert r.min() >= -1 and r.max() <= 1 and r.min() < -0.9 and r.max() > 0.9


def test_random_erasing_noise_differs_between_images():
    """value="random": torchvision draws normal_() for each erased value of each image, so two identical images
    erased in the same box get different noise."""
    x = torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    aug = BatchAugment(AugmentSpec(erasing_prob=1.0, erasing_random=True), *IDENTITY)
    p = aug.sample_params(x)
    p["erasing"] = torch.tensor([[1.0, 4, 4, 6, 6]] * 2)  # the same box in both
    out = aug.apply(x, p)
    box = out[:, :, 4:10, 4:10]
    assert (box - 200 / 255).abs().min() > 0  # the box was filled with noise
    assert (box[0] != box[1]).all()


# ----------------------------------------------------------------------------------------------------
# Flip alone; random erasing's boxes against v2.RandomErasing
# ----------------------------------------------------------------------------------------------------
def test_flip_without_crop_gives_the_image_or_its_mirror():
    """RandomHorizontalFlip alone: every output is exactly its image or its left-right mirror (no shift, no
    padding), both occurring."""
    x = images(64, seed=16)
    out = (BatchAugment(AugmentSpec(flip=True), *IDENTITY)(x) * 255).round().to(torch.uint8)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 10 < int(mirrored.sum()) < 54


def test_erasing_boxes_lie_inside_and_strictly_smaller_than_the_image():
    """v2.RandomErasing: a box is kept only if h < H and w < W (else it tries again), and its corner is uniform on
    0..H-h by 0..W-w (torch.randint(0, H - h + 1)): over 20,000 draws with the area up to the whole image, every
    erased box fits, both last positions occur, and the top row is 0 only about 1/(H-h+1) of the time."""
    H = W = 32
    box = draws(AugmentSpec(erasing_prob=1.0, erasing_max_area=1.0), 20_000, H, W)["erasing"]
    on, top, left, h, w = box[box[:, 0] == 1].T
    assert len(on) > 19_000
    assert (h >= 1).all() and (w >= 1).all() and (h < H).all() and (w < W).all()
    assert (top >= 0).all() and (left >= 0).all() and (top <= H - h).all() and (left <= W - w).all()
    assert (top == H - h).sum() > 100 and (left == W - w).sum() > 100
    assert (top > 0).float().mean() > 0.8 and (left > 0).float().mean() > 0.8
    assert (top == torch.floor(top)).all() and (left == torch.floor(left)).all()


def test_no_box_rate_after_ten_tries_matches_torchvision():
    """v2.RandomErasing gives up after 10 boxes that do not fit and leaves the image as it is. On 32 x 4 images with
    the area up to the whole image most boxes are too wide, so about a third of the images get none: the batched
    rate agrees with torchvision's own make_params (3,000 calls) within 5 standard errors; every image is erased
    on its own terms (not all of them because some image's box fits)."""
    H, W, n_tv, n = 32, 4, 3000, 20_000
    t = v2.RandomErasing(p=1.0, scale=(0.02, 1.0), ratio=(0.3, 3.3))
    make_params = getattr(t, "make_params", None) or getattr(t, "_get_params")
    img = torch.zeros(3, H, W)
    none_tv = sum(make_params([img])["v"] is None for _ in range(n_tv)) / n_tv
    assert 0.2 < none_tv < 0.5
    none = 1 - draws(AugmentSpec(erasing_prob=1.0, erasing_max_area=1.0), n, H, W)["erasing"][:, 0].mean().item()
    se = math.sqrt(none_tv * (1 - none_tv) * (1 / n_tv + 1 / n))
    assert abs(none - none_tv) <= 5 * se, (none, none_tv)


def test_erasing_box_shapes_spread_like_torchvisions():
    """v2.RandomErasing draws each box's aspect ratio log-uniformly on (0.3, 3.3), independently per call: on
    square images log(h / w) is symmetric about 0 (the range is symmetric in log to 1%, and the fit test treats h
    and w alike), and its spread is torchvision's own (make_params, 3,000 calls) -- every image its own ratio, not
    one ratio shared by the batch."""
    H = W = 32
    t = v2.RandomErasing(p=1.0, scale=(0.02, 0.33), ratio=(0.3, 3.3))
    make_params = getattr(t, "make_params", None) or getattr(t, "_get_params")
    img = torch.zeros(3, H, W)
    tv = torch.tensor([math.log(q["h"] / q["w"]) for q in (make_params([img]) for _ in range(3000))])
    box = draws(AugmentSpec(erasing_prob=1.0), 20_000, H, W)["erasing"]
    ours = torch.log(box[:, 3] / box[:, 4])[box[:, 0] == 1]
    assert len(ours) > 19_000
    assert abs(ours.mean().item()) < 0.03  # 6 standard errors; a range cut to (0.3, e) gives -0.1
    assert abs(ours.std().item() - tv.std().item()) < 0.05, (ours.std(), tv.std())
    assert ours.min() < -1.0 and ours.max() > 1.0
