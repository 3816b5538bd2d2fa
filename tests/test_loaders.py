"""lib.augment's loaders and their device policy, the per-sample transform's settings, and BatchMix's draws.

The machine running the tests has no GPU, but the documented CUDA policy is still checked: ``torch.device("cuda")``
can be built without one, and so can a DataLoader for it (never iterated here). Images whose pixels all equal
their index (mean 0, std 1: x * 255 gives the index back) show which images a batch holds, in which order.
Synthetic arrays only; every random draw is seeded.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torch.distributions import Beta
from torchvision.transforms import v2

import lib.augment
from augment_helpers import IDENTITY, MEAN, STD, cfg_
from lib.augment import (ArrayDataset, BatchMix, DeviceLoader, EvalLoader, TorchvisionLoader, default_chunk_images,
                         default_num_workers, make_eval_loader, make_train_loader, memory_format,
                         resolve_channels_last, resolve_loader_kind, train_transform)
from lib.policies import AugmentSpec

PLAIN = AugmentSpec()  # no augmentation, mix_prob 0: one-hot targets, images only normalised


def indexed(n, labels_dtype=np.int64):
    """n images, every pixel of image i equal to i (n <= 256), labels i % 10."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), (n, 32, 32, 3)).copy()
    return x, (np.arange(n) % 10).astype(labels_dtype)


def random_arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def indices_of(xb):
    """The image indices of a batch of `indexed` images normalised with mean 0, std 1."""
    return (xb[:, 0, 0, 0] * 255).round().long().tolist()


def nhwc_only(t):
    """channels_last memory and not the default NCHW layout (the two differ for 3 channels, 32x32)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# ----------------------------------------------------------------------------------------------------
# Device policy: the docstrings' CUDA and CPU defaults
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda", torch.device("cuda"), "cuda:1"])
def test_auto_loader_is_the_device_loader_on_cuda(device):
    # docstring: auto -> "device" on CUDA, "torchvision" on the CPU
    assert resolve_loader_kind("auto", device) == "device"
    assert resolve_loader_kind("auto", "cpu") == "torchvision"


def test_make_train_loader_builds_the_loader_kind_asked_for():
    x, y = random_arrays(16)
    cfg = cfg_(batch_size=8, augment="none", mix_prob=0.0)
    assert isinstance(make_train_loader(cfg, x, y, MEAN, STD, "cpu", "device"), DeviceLoader)
    assert isinstance(make_train_loader(cfg, x, y, MEAN, STD, "cpu", "torchvision"), TorchvisionLoader)
    assert isinstance(make_train_loader(cfg, x, y, MEAN, STD, "cpu", "auto"), TorchvisionLoader)  # CPU: per-sample
    assert isinstance(make_train_loader(cfg, x, y, MEAN, STD, "cpu"), TorchvisionLoader)  # the default: the report's


@pytest.mark.parametrize("device", ["cuda", torch.device("cuda")])
def test_channels_last_default_on_cuda_off_on_cpu_explicit_kept(device):
    # docstring: None -> on for CUDA, off on the CPU; --channels-last / --no-channels-last win on either
    assert resolve_channels_last(None, device) is True and memory_format(None, device) == torch.channels_last
    assert resolve_channels_last(None, "cpu") is False and memory_format(None, "cpu") == torch.contiguous_format
    assert resolve_channels_last(True, "cpu") is True and memory_format(True, "cpu") == torch.channels_last
    assert resolve_channels_last(False, device) is False and memory_format(False, device) == torch.contiguous_format


def test_default_workers_up_to_four_on_cuda_none_on_cpu(monkeypatch):
    # docstring: on CUDA up to 4 workers (fewer on a machine with fewer cores), on the CPU none
    for cores, expected in ((None, 1), (1, 1), (2, 2), (16, 4)):  # os.cpu_count() is None when unknown
        monkeypatch.setattr(lib.augment.os, "cpu_count", lambda: cores)
        assert default_num_workers("cuda") == expected
        assert default_num_workers(torch.device("cuda:0")) == expected
        assert default_num_workers("cpu") == 0


def test_default_chunk_sizes():
    # docstring: 512 images per BatchAugment call on the CPU, 16,384 on a GPU
    assert default_chunk_images("cpu") == 512
    assert default_chunk_images("cuda") == 16_384 and default_chunk_images(torch.device("cuda:0")) == 16_384


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # more than this CPU has
def test_torchvision_loader_for_cuda_pins_memory_and_uses_workers(monkeypatch):
    # built only (a DataLoader starts workers and pins memory when iterated): pinned host memory for the copies to
    # the GPU, min(4, cores) workers; on the CPU neither; an explicit worker count wins
    monkeypatch.setattr(lib.augment.os, "cpu_count", lambda: 16)
    x, y = random_arrays(16)
    cuda = TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cuda", 8)
    assert cuda.loader.pin_memory is True and cuda.loader.num_workers == 4
    assert TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cuda", 8, num_workers=1).loader.num_workers == 1
    cpu = TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cpu", 8)
    assert cpu.loader.pin_memory is False and cpu.loader.num_workers == 0
    assert TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cpu", 8, num_workers=1).loader.num_workers == 1


def test_config_num_workers_reaches_the_dataloader():
    x, y = random_arrays(16)
    loader = make_train_loader(cfg_(batch_size=8, augment="none", num_workers=1), x, y, MEAN, STD, "cpu")
    assert loader.loader.num_workers == 1


# ----------------------------------------------------------------------------------------------------
# channels_last batches on the CPU when asked for
# ----------------------------------------------------------------------------------------------------
def test_channels_last_true_gives_nhwc_batches_from_every_loader():
    x, y = random_arrays(24)
    cfg = cfg_(batch_size=8, augment="crop,flip", mix_prob=0.5, channels_last=True)
    loaders = {
        "EvalLoader": EvalLoader(x, y, MEAN, STD, "cpu", 8, channels_last=True),
        "make_eval_loader": make_eval_loader(x, y, MEAN, STD, "cpu", 8, channels_last=True),
        "DeviceLoader": DeviceLoader(PLAIN, x, y, MEAN, STD, "cpu", 8, channels_last=True),
        "TorchvisionLoader": TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cpu", 8, channels_last=True),
        "make_train_loader device": make_train_loader(cfg, x, y, MEAN, STD, "cpu", "device"),
        "make_train_loader torchvision": make_train_loader(cfg, x, y, MEAN, STD, "cpu", "torchvision"),
    }
    torch.manual_seed(0)
    for name, loader in loaders.items():
        batches = [xb for xb, _ in loader]
        assert len(batches) == 3 and all(xb.shape == (8, 3, 32, 32) and nhwc_only(xb) for xb in batches), name


def test_channels_last_unset_gives_nchw_batches_on_cpu():
    x, y = random_arrays(16)
    torch.manual_seed(0)
    for loader in (EvalLoader(x, y, MEAN, STD, "cpu", 8), DeviceLoader(PLAIN, x, y, MEAN, STD, "cpu", 8),
                   TorchvisionLoader(PLAIN, x, y, MEAN, STD, "cpu", 8)):
        assert all(xb.is_contiguous() and not xb.is_contiguous(memory_format=torch.channels_last)
                   for xb, _ in loader)


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------
def test_four_channel_images_refused():
    x = np.zeros((4, 32, 32, 4), dtype=np.uint8)  # uint8, 4-d: only the channel count is wrong
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        make_train_loader(cfg_(batch_size=2), x, y, MEAN, STD, "cpu", "device")
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        make_eval_loader(x, y, MEAN, STD, "cpu")


def test_empty_set_refused_one_image_accepted():
    x, y = random_arrays(1)
    with pytest.raises(ValueError, match=r"^no images to load$"):
        make_eval_loader(x[:0], y[:0], MEAN, STD, "cpu")
    with pytest.raises(ValueError, match=r"^no images to load$"):
        make_train_loader(cfg_(batch_size=2), x[:0], y[:0], MEAN, STD, "cpu", "device")
    (xb, yb), = list(make_eval_loader(x, y, MEAN, STD, "cpu"))
    assert xb.shape == (1, 3, 32, 32) and yb.tolist() == y.tolist()
    torch.manual_seed(0)
    for kind in ("device", "torchvision"):  # a set smaller than a batch: one batch of all of it
        (xb, soft), = list(make_train_loader(cfg_(batch_size=2, mix_prob=0.0), x, y, MEAN, STD, "cpu", kind))
        assert xb.shape == (1, 3, 32, 32) and soft.argmax(1).tolist() == y.tolist()


# ----------------------------------------------------------------------------------------------------
# ArrayDataset, labels of any integer dtype, EvalLoader's default batch
# ----------------------------------------------------------------------------------------------------
def test_array_dataset_without_transform_is_the_chw_image_and_int_label():
    x, y = random_arrays(5, seed=3)
    ds = ArrayDataset(x, y.astype(np.uint8))
    assert len(ds) == 5
    for i in range(5):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
        assert np.array_equal(img.numpy(), x[i].transpose(2, 0, 1))  # numpy's HWC -> CHW
        assert type(label) is int and label == int(y[i])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_small_integer_labels_give_one_hot_targets_and_int64_labels(dtype):
    x, y = indexed(24, dtype)
    torch.manual_seed(0)
    batches = list(DeviceLoader(PLAIN, x, y, IDENTITY[0], IDENTITY[1], "cpu", 8))
    assert len(batches) == 3
    for xb, soft in batches:  # one-hot row of each image's own label (index % 10)
        assert soft.dtype == torch.float32 and soft.shape == (8, 10)
        assert torch.equal(soft, torch.eye(10)[[i % 10 for i in indices_of(xb)]])
    labels = [yb for _, yb in EvalLoader(x, y, IDENTITY[0], IDENTITY[1], "cpu", 8)]
    assert all(yb.dtype == torch.int64 for yb in labels)  # what cross-entropy and one_hot take
    assert torch.cat(labels).tolist() == (np.arange(24) % 10).tolist()


def test_eval_batch_size_defaults_to_256():
    x, y = indexed(257)
    for loader in (EvalLoader(x, y, MEAN, STD, "cpu"), make_eval_loader(x, y, MEAN, STD, "cpu")):
        assert len(loader) == 2 and [len(yb) for _, yb in loader] == [256, 1]


# ----------------------------------------------------------------------------------------------------
# Epoch order: every image once (device loader, in chunks), shuffled (torchvision loader)
# ----------------------------------------------------------------------------------------------------
def test_device_loader_chunks_of_whole_batches_cover_the_epoch_once():
    x, y = indexed(40)
    loader = DeviceLoader(PLAIN, x, y, IDENTITY[0], IDENTITY[1], "cpu", 8, chunk_images=8)
    calls, augment = [], loader.augment
    loader.augment = lambda imgs: calls.append(len(imgs)) or augment(imgs)
    torch.manual_seed(0)
    batches = list(loader)
    assert calls == [8] * 5  # a chunk of chunk_images = one batch: one call per batch
    assert len(batches) == len(loader) == 5
    seen = [i for xb, _ in batches for i in indices_of(xb)]
    assert sorted(seen) == list(range(40))  # 40 = 5 batches of 8: every image exactly once
    assert all(torch.equal(soft, torch.eye(10)[[i % 10 for i in indices_of(xb)]]) for xb, soft in batches)


def test_torchvision_loader_shuffles_and_drops_the_last_partial_batch():
    x, y = indexed(42)
    loader = TorchvisionLoader(PLAIN, x, y, IDENTITY[0], IDENTITY[1], "cpu", 8)
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 5 and all(len(xb) == 8 for xb, _ in batches)  # 42 // 8, drop_last
    seen = [i for xb, _ in batches for i in indices_of(xb)]
    assert len(set(seen)) == 40 and set(seen) <= set(range(42))
    assert seen != sorted(seen)  # shuffle=True: a seeded random order, not the index order


# ----------------------------------------------------------------------------------------------------
# BatchMix
# ----------------------------------------------------------------------------------------------------
def test_mix_prob_zero_draws_nothing_and_gives_one_hot():
    # with probability 0 no coin is needed: the global RNG stream (an epoch's replay) is left as it was
    mix = BatchMix(AugmentSpec(mix_prob=0.0))
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([3, 1, 4, 1])
    state = torch.get_rng_state()
    xm, soft = mix(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(xm, x) and torch.equal(soft, nnf.one_hot(y, 10).float())


def beta_mass(alpha, lo, hi):
    """P(lo <= L <= hi) for L ~ Beta(alpha, alpha), by the trapezoid rule on torch's density."""
    grid = torch.linspace(lo, hi, 100_001, dtype=torch.float64)
    a = torch.tensor(alpha, dtype=torch.float64)
    return torch.trapezoid(Beta(a, a).log_prob(grid).exp(), grid).item()


def mixed_lambdas(alpha, calls=600):
    """(MixUp lambdas, CutMix lambdas) of `calls` seeded 2-image batches with labels 0 and 1, mix_prob 1."""
    mix = BatchMix(AugmentSpec(mix_prob=1.0, mixup_alpha=alpha, cutmix_alpha=alpha))
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    mixup, cutmix = [], []
    for _ in range(calls):
        xm, soft = mix(x, y)
        lam = soft[0, 0].item()  # image 0's weight on its own label
        pasted = ((xm == x) | (xm == x.roll(1, 0))).all()  # CutMix pastes pixels, MixUp blends every pixel
        (cutmix if pasted else mixup).append(lam)
    return torch.tensor(mixup), torch.tensor(cutmix)


def test_mixup_lambda_follows_the_configured_beta():
    # Beta(0.2, 0.2) is U-shaped: about 17% of its mass in [0.25, 0.75]; Beta(1, 1) (torchvision's default alpha)
    # puts 50% there
    u_shaped, uniform = beta_mass(0.2, 0.25, 0.75), beta_mass(1.0, 0.25, 0.75)
    assert u_shaped < 0.2 and abs(uniform - 0.5) < 1e-6
    mixup, _ = mixed_lambdas(0.2)
    assert len(mixup) > 200
    assert ((mixup >= 0.25) & (mixup <= 0.75)).float().mean() < (u_shaped + uniform) / 2


def test_cutmix_lambda_follows_the_configured_beta():
    # CutMix cuts a box of side sqrt(1 - lambda) * 32 centred anywhere, clipped at the border, and reports the
    # share kept: never less than the drawn lambda. So P(kept >= 0.99) >= P(lambda >= 0.99), 21% for Beta(0.2, 0.2).
    # Kept >= 0.99 means at most 10 pixels cut; at least a quarter of the box stays inside (its centre is), so the
    # half-side int(sqrt(1 - lambda) * 16) is at most 3: lambda > 1 - 1/16, which Beta(1, 1) gives 1/16 of the time.
    at_least = (1 - beta_mass(0.2, 0.01, 0.99)) / 2
    at_most_if_uniform = 1 / 16
    assert at_least > 0.2
    _, cutmix = mixed_lambdas(0.2)
    assert len(cutmix) > 200
    assert (cutmix >= 0.99).float().mean() > (at_least + at_most_if_uniform) / 2


# ----------------------------------------------------------------------------------------------------
# The per-sample transform's settings
# ----------------------------------------------------------------------------------------------------
def test_crop_is_a_window_of_the_image_zero_padded_by_4():
    # RandomCrop(32, padding=4): pad 4 zero pixels on every side, cut a random 32x32 window (9 x 9 offsets)
    t = train_transform(cfg_(augment="crop"), *IDENTITY)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    padded = nnf.pad(img, (4, 4, 4, 4))
    torch.manual_seed(0)
    offsets = set()
    for _ in range(30):
        out = (t(img) * 255).round().to(torch.uint8)
        found = [(i, j) for i in range(9) for j in range(9) if torch.equal(padded[:, i:i + 32, j:j + 32], out)]
        assert len(found) == 1
        offsets |= set(found)
    assert len(offsets) > 1 and offsets != {(4, 4)}  # not always the uncropped image


def test_jitter_strength_in_torchvision_terms():
    # ColorJitter's float b means a factor in [1 - b, 1 + b], hue h a shift in [-h, h]; the config: hue a quarter
    jitter, = [s for s in train_transform(cfg_(augment="jitter", color_jitter=0.4), *IDENTITY).transforms
               if isinstance(s, v2.ColorJitter)]
    for factor in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert factor == pytest.approx((0.6, 1.4))
    assert jitter.hue == pytest.approx((-0.1, 0.1))


def test_one_degree_rotation_is_kept():
    rotations = [s for s in train_transform(cfg_(augment="rotation", rotation_degrees=1.0), *IDENTITY).transforms
                 if isinstance(s, v2.RandomRotation)]
    assert len(rotations) == 1 and rotations[0].degrees == [-1.0, 1.0]


def erased(cfg, n=20):
    """(mask of erased pixels, output) for n seeded draws on a white image: 1.0 everywhere after mean 0, std 1."""
    t = train_transform(cfg, *IDENTITY)
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    outs = [t(white) for _ in range(n)]
    return [o != 1.0 for o in outs], outs


def test_erasing_probability_one_erases_every_image_with_zeros():
    masks, outs = erased(cfg_(augment="erasing", erasing_prob=1.0, erasing_value="zero"))
    for mask, out in zip(masks, outs):
        assert mask.any()  # erased: p = 1
        rows, cols = mask[0].any(1).nonzero().flatten(), mask[0].any(0).nonzero().flatten()
        box = torch.zeros_like(mask[0])
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(mask[0], box) and torch.equal(mask, mask[0].expand(3, -1, -1))  # one rectangle
        assert (out[mask] == 0).all()  # value "zero": exactly 0 after normalisation


def test_erasing_random_fills_with_varied_values():
    masks, outs = erased(cfg_(augment="erasing", erasing_prob=1.0, erasing_value="random"))
    for mask, out in zip(masks, outs):
        assert mask.any() and out[mask].unique().numel() > 1  # per-pixel N(0, 1), not a constant
