"""The report's augmentations on a whole uint8 NCHW batch on any device (the "device" loader's pipeline).

The per-sample pipeline's operations, settings and parameter distributions (``lib.augment.train_transform``),
drawn independently for every image, with no Python loop over images. Written by hand: torchvision v2 draws one
set of parameters per call, i.e. per batch, and kornia's RandAugment picks its ops per batch too.

``BatchAugment.sample_params`` draws every random number of a batch (in one fixed order, from torch's global
RNG, so ``torch.manual_seed`` replays it); ``BatchAugment.apply`` is deterministic given those parameters, as
torchvision.transforms.v2's ``make_params`` / ``transform``.

The device loader (``lib.augment.DeviceLoader``) calls it on thousands of images at a time: the cost of a call is
its ~600-1,000 kernel launches, nearly independent of the batch size on a GPU (report/benchmarks.md).

Order: crop(pad 4) + flip -> colour jitter -> rotation -> RandAugment | AutoAugment -> normalise -> erasing.
Differences from the per-sample path, all within rounding: values stay float between ops (torchvision rounds
to uint8 after each), and RandomRotation is composed with the first policy slot's geometric op into a single
resampling.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as F

from .policies import (AUTOAUGMENT_BINS, AUTOAUGMENT_CIFAR10, ERASING_RATIO, ERASING_SCALE, GEOMETRIC, OP, OPS,
                       PADDING, RANDAUGMENT_BINS, RANDAUGMENT_OPS, SIGNED_MAX, AugmentSpec, magnitude)

ERASING_TRIES = 10             # v2.RandomErasing gives up (erases nothing) after 10 boxes that do not fit


# ----------------------------------------------------------------------------------------------------
# Applying an op to the images that drew it
# ----------------------------------------------------------------------------------------------------
def masked_selection(device: torch.device) -> bool:
    """How ``select`` applies an op to some images of a batch. On CUDA (True): computed for the whole batch and
    kept with torch.where -- no host sync, and the GPU has cycles to spare. On CPU (False): computed only for the
    selected images (boolean indexing needs their count, a sync that costs nothing there), several times faster
    (report/benchmarks.md). Both give the same images (tested)."""
    return device.type != "cpu"


def select(x: torch.Tensor, mask: torch.Tensor | None, fn: Callable) -> torch.Tensor:
    """``fn(images, index)`` applied to the images where ``mask`` holds (all if None)."""
    if mask is None:
        return fn(x, slice(None))
    if masked_selection(x.device):
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, slice(None)), x)
    idx = mask.nonzero().squeeze(1)
    if len(idx):
        x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))  # x is the pipeline's own intermediate
    return x


# ----------------------------------------------------------------------------------------------------
# Colour ops on float [0, 1] batches with one magnitude per image (m: shape (n, 1, 1, 1)), torchvision's formulas
# ----------------------------------------------------------------------------------------------------
def _blend(x, degenerate, factor):
    # torchvision's factor * x + (1 - factor) * degenerate, as one fused lerp
    return torch.lerp(degenerate.expand_as(x), x, factor).clamp_(0, 1)


def _sharpness(x, m):
    # F.adjust_sharpness's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (9 * box3x3 + 4 * centre) / 13
    # (avg_pool2d is several times faster than a depthwise conv2d on CPU); borders keep their pixels
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = (nnf.avg_pool2d(x, 3, stride=1) * 9 + x[:, :, 1:-1, 1:-1] * 4) / 13
    return _blend(x, blurred, 1 + m)


def _posterize(x, m):  # keep the top m bits of the 8-bit value
    step = torch.exp2(8 - m)
    return torch.floor(torch.round(x * 255) / step) * step / 255


def _autocontrast(x, m):  # stretch each channel to [0, 1]; flat channels unchanged
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    return torch.where(flat, x, ((x - lo) / torch.where(flat, 1.0, hi - lo)).clamp_(0, 1))


def _adjust_hue(x, hue):
    """F.adjust_hue with one shift per image: HSV hue rotated, value (max) and chroma (max - min) kept. Written
    out because F.adjust_hue takes one float for the batch; the closed-form HSV -> RGB avoids its gathers."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, 1.0)
    sector = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h6 = torch.remainder(sector + 6 * hue.view(-1, 1, 1), 6)  # hue in [0, 6), shifted
    # channel n (R=5, G=3, B=1): v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6
    return torch.stack([maxc - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
                        for k in (torch.remainder(h6 + n, 6) for n in (5, 3, 1))], 1)


def _equalize(x, m):  # F.equalize is already batched (per-image, per-channel histograms)
    return F.to_dtype(F.equalize(F.to_dtype(x, torch.uint8, scale=True)), torch.float32, scale=True)


COLOUR_OPS = {
    "Brightness": lambda x, m: (x * (1 + m)).clamp_(0, 1),  # blend with black
    "Color": lambda x, m: _blend(x, F.rgb_to_grayscale(x), 1 + m),
    "Contrast": lambda x, m: _blend(x, F.rgb_to_grayscale(x).mean((1, 2, 3), keepdim=True), 1 + m),
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": lambda x, m: torch.where(x >= m, 1 - x, x),
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": lambda x, m: 1 - x,
}


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """v2.ColorJitter with per-image ``factors`` (N, 4: brightness, contrast, saturation, hue shift), applied in
    each image's ``order`` (N, 4: 0=brightness, 1=contrast, 2=saturation, 3=hue). At each position one blend
    serves the three linear ops (torchvision's degenerate images: black, mean grey, grey); hue runs on the images
    whose turn it is."""
    N = x.shape[0]
    brightness, contrast, saturation, hue = (f.view(N, 1, 1, 1) for f in factors.unbind(1))
    for k in range(4):
        op = order[:, k].view(N, 1, 1, 1)
        factor = torch.where(op == 0, brightness, torch.where(op == 1, contrast,
                                                              torch.where(op == 2, saturation, 1.0)))
        gray = F.rgb_to_grayscale(x)
        degenerate = torch.where(op == 2, gray, torch.where(op == 1, gray.mean((2, 3), keepdim=True), 0.0))
        x = _blend(x, degenerate, factor)
        x = select(x, op.view(N) == 3, lambda xs, i: _adjust_hue(xs, hue.view(N)[i]))
    return x


# ----------------------------------------------------------------------------------------------------
# Geometry: per-image inverse affine matrices in torchvision's convention, one nearest-neighbour grid_sample
# ----------------------------------------------------------------------------------------------------
def inverse_affine(rot, tan_sx, sy, cx, cy, tx, ty) -> torch.Tensor:
    """Vectorised torchvision ``_get_inverse_affine_matrix`` (scale 1); angles in radians -> (N, 3, 3)."""
    cos_sy = torch.cos(sy)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m = torch.zeros(rot.shape[0], 3, 3, device=rot.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = d, -b, -c, a, 1
    m[:, 0, 2] = cx - d * (cx + tx) + b * (cy + ty)
    m[:, 1, 2] = cy + c * (cx + tx) - a * (cy + ty)
    return m


def rotation_matrix(angle: torch.Tensor) -> torch.Tensor:
    """F.rotate(img, angle) for each image's angle in degrees (F.rotate turns by -angle in its matrix)."""
    zero = torch.zeros_like(angle)
    return inverse_affine(torch.deg2rad(-angle), zero, zero, zero, zero, zero, zero)


def policy_matrix(op: torch.Tensor, mag: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """RandAugment's ShearX/Y (about the top-left corner), TranslateX/Y (whole pixels), Rotate; else identity."""
    zero = torch.zeros_like(mag)

    def where(name, value, other=zero):
        return torch.where(op == OP[name], value, other)

    corner_x, corner_y = where("ShearX", zero - W / 2), where("ShearX", zero - H / 2)  # F.affine center=[0, 0]
    corner_x, corner_y = where("ShearY", zero - W / 2, corner_x), where("ShearY", zero - H / 2, corner_y)
    return inverse_affine(rot=where("Rotate", torch.deg2rad(-mag)), tan_sx=where("ShearX", mag),
                          sy=where("ShearY", torch.atan(mag)), cx=corner_x, cy=corner_y,
                          tx=where("TranslateX", torch.trunc(mag)), ty=where("TranslateY", torch.trunc(mag)))


def warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp with zero fill on torchvision's pixel grid (its ``_affine_grid`` + grid_sample,
    align_corners=False), the grid computed elementwise: cheaper than a bmm with 3-wide rows."""
    N, _, H, W = x.shape
    ys = torch.linspace((1 - H) / 2, (H - 1) / 2, H, device=x.device).view(1, H, 1)  # pixel centres,
    xs = torch.linspace((1 - W) / 2, (W - 1) / 2, W, device=x.device).view(1, 1, W)  # origin mid-image
    m = inverse.view(N, 9, 1, 1)
    gx = (m[:, 0] * xs + m[:, 1] * ys + m[:, 2]) / (W / 2)
    gy = (m[:, 3] * xs + m[:, 4] * ys + m[:, 5]) / (H / 2)
    return nnf.grid_sample(x, torch.stack([gx, gy], -1), mode="nearest", padding_mode="zeros", align_corners=False)


def apply_policy_op(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor,
                    first_warp: torch.Tensor | None = None) -> torch.Tensor:
    """One RandAugment/AutoAugment slot on float [0, 1] images: each image runs the op it drew (index into OPS)
    with its signed magnitude. ``first_warp``: RandomRotation's matrices, composed with this slot's geometric op
    into one resampling."""
    geometric = policy_matrix(op, mag, x.shape[2], x.shape[3])
    if first_warp is not None:
        geometric = first_warp @ geometric
    is_geometric = (op >= OP[GEOMETRIC[0]]) & (op <= OP[GEOMETRIC[-1]])
    x = select(x, None if first_warp is not None else is_geometric, lambda xs, i: warp(xs, geometric[i]))
    for name, fn in COLOUR_OPS.items():
        x = select(x, op == OP[name], lambda xs, i: fn(xs, mag[i].view(-1, 1, 1, 1)))
    return x


# ----------------------------------------------------------------------------------------------------
# Drawing the parameters (every random number of a batch, one row per image) and applying them
# ----------------------------------------------------------------------------------------------------
def policy_table(spec: AugmentSpec, H: int, W: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The policy's ops, magnitudes and (AutoAugment) probabilities as tensors on ``device``."""
    signed = [name in SIGNED_MAX for name in OPS]
    if spec.policy == "randaugment":
        table = {"choices": [OP[name] for name in RANDAUGMENT_OPS], "signed": signed,
                 "mags": [magnitude(name, spec.magnitude, RANDAUGMENT_BINS, H, W) for name in OPS]}
    else:
        table = {"op": [[OP[name] for name, _, _ in pol] for pol in AUTOAUGMENT_CIFAR10],
                 "prob": [[prob for _, prob, _ in pol] for pol in AUTOAUGMENT_CIFAR10],
                 "mag": [[magnitude(name, b, AUTOAUGMENT_BINS, H, W) for name, _, b in pol]
                         for pol in AUTOAUGMENT_CIFAR10], "signed": signed}
    return {k: torch.tensor(v, device=device) for k, v in table.items()}


def sample_policy(spec: AugmentSpec, t: dict[str, torch.Tensor], N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's policy ops (index into OPS) and signed magnitudes, one column per slot."""
    dev, slots = t["signed"].device, []
    if spec.policy == "randaugment":  # each slot: one of the 14 ops uniformly, at the configured magnitude
        for _ in range(spec.num_ops):
            op = t["choices"][torch.randint(len(t["choices"]), (N,), device=dev)]
            slots.append((op, t["mags"][op]))
    else:  # AutoAugment CIFAR-10: one of 25 sub-policies; each of its two ops runs with its probability
        policy = torch.randint(t["op"].shape[0], (N,), device=dev)
        for k in range(2):
            run = torch.rand(N, device=dev) <= t["prob"][policy, k]
            slots.append((torch.where(run, t["op"][policy, k], OP["Identity"]), t["mag"][policy, k]))
    ops, mags = [], []
    for op, mag in slots:  # torchvision: a signed op's magnitude is negated with probability 1/2
        flip_sign = t["signed"][op] & (torch.rand(N, device=dev) <= 0.5)
        ops.append(op)
        mags.append(torch.where(flip_sign, -mag, mag))
    return torch.stack(ops, 1), torch.stack(mags, 1)


def sample_erasing(spec: AugmentSpec, N: int, H: int, W: int, dev: torch.device) -> torch.Tensor:
    """v2.RandomErasing's box sampling, vectorised over images and its 10 tries: (erase?, top, left, h, w)."""
    area = H * W * torch.empty(N, ERASING_TRIES, device=dev).uniform_(ERASING_SCALE[0], spec.erasing_max_area)
    log_ratio = torch.empty(N, ERASING_TRIES, device=dev).uniform_(math.log(ERASING_RATIO[0]),
                                                                   math.log(ERASING_RATIO[1]))
    h = torch.round(torch.sqrt(area * torch.exp(log_ratio)))
    w = torch.round(torch.sqrt(area / torch.exp(log_ratio)))
    fits = (h < H) & (w < W)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # torchvision takes the first box that fits
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top = torch.floor(torch.rand(N, device=dev) * (H - h + 1))
    left = torch.floor(torch.rand(N, device=dev) * (W - w + 1))
    erase = (torch.rand(N, device=dev) < spec.erasing_prob) & fits.any(1)
    return torch.stack([erase.float(), top, left, h, w], 1)


def crop_flip(x: torch.Tensor, shift: torch.Tensor | None, flipped: torch.Tensor | None) -> torch.Tensor:
    """Crop (zero padding) and flip as one flat gather on uint8: several times faster than 4-D indexing."""
    N, C, H, W = x.shape
    dev = x.device
    rows = torch.arange(H, device=dev).expand(N, H)
    cols = torch.arange(W, device=dev).expand(N, W)
    if flipped is not None:
        cols = torch.where(flipped.view(N, 1), W - 1 - cols, cols)
    pad = PADDING if shift is not None else 0
    if shift is not None:
        rows, cols = rows + shift[:, :1] + pad, cols + shift[:, 1:] + pad
    Hp, Wp = H + 2 * pad, W + 2 * pad
    padded = nnf.pad(x, (pad, pad, pad, pad)).flatten(1)
    index = (torch.arange(C, device=dev).view(1, C, 1, 1) * (Hp * Wp) + rows[:, None, :, None] * Wp
             + cols[:, None, None, :])
    return padded.gather(1, index.flatten(1)).view(N, C, H, W)


def erase(x: torch.Tensor, box: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box (erase?, top, left, h, w) set to 0, or to ``noise`` (value="random")."""
    N, _, H, W = x.shape
    on, top, left, h, w = (v.view(N, 1, 1) for v in box.unbind(1))
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & (on > 0)
    if noise is None:
        return x.masked_fill(inside[:, None], 0.0)
    return torch.where(inside[:, None], noise, x)


class BatchAugment:
    """uint8 NCHW batch (any device, channels_last fine) -> augmented, normalised float32 NCHW batch:
    ``apply(x, sample_params(x))``, as torchvision.transforms.v2's ``make_params`` / ``transform``."""

    def __init__(self, spec, mean: Sequence[float], std: Sequence[float]):
        self.spec = AugmentSpec.of(spec)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        # constant tensors per device (and image size): a host-to-device copy per batch would be a host sync
        self._consts: dict = {}
        self._tables: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment expects a uint8 (N, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        return self.apply(x, self.sample_params(x))

    def sample_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every random draw for batch ``x``, one row per image, on its device; keys only for the ops that are on:
        flip (bool), crop (row/column shift -4..4), jitter (brightness, contrast, saturation factors, hue shift),
        jitter_order, ops / magnitudes (per policy slot: index into OPS, signed magnitude), rotation (degrees),
        erasing (erase?, top, left, height, width), erasing_noise (N(0, 1) per pixel, with erasing_value "random").
        Drawn in this fixed order from torch's global RNG, so ``torch.manual_seed`` replays a batch."""
        (N, _, H, W), dev, s = x.shape, x.device, self.spec
        p: dict[str, torch.Tensor] = {}
        if s.flip:
            p["flip"] = torch.rand(N, device=dev) < 0.5  # v2.RandomHorizontalFlip(p=0.5)
        if s.crop:  # RandomCrop(padding=4): offsets uniform in 0..8 of the padded image = shift -4..4
            p["crop"] = torch.cat([torch.randint(0, 2 * PADDING + 1, (N, 1), device=dev) for _ in "yx"], 1) - PADDING
        if s.jitter > 0:
            j = s.jitter
            factors = [torch.empty(N, device=dev).uniform_(max(0.0, 1 - j), 1 + j) for _ in range(3)]
            p["jitter"] = torch.stack(factors + [torch.empty(N, device=dev).uniform_(-j / 4, j / 4)], 1)
            p["jitter_order"] = torch.rand(N, 4, device=dev).argsort(1)  # each its own order, as v2's randperm(4)
        if s.policy:
            key = (H, W, str(dev))
            if key not in self._tables:
                self._tables[key] = policy_table(s, H, W, dev)
            p["ops"], p["magnitudes"] = sample_policy(s, self._tables[key], N)
        if s.rotation > 0:
            p["rotation"] = torch.empty(N, device=dev).uniform_(-s.rotation, s.rotation)  # v2.RandomRotation
        if s.erasing_prob > 0:
            p["erasing"] = sample_erasing(s, N, H, W, dev)
            if s.erasing_random:  # v2.RandomErasing(value="random"): normal_() for each erased value
                p["erasing_noise"] = torch.randn(N, x.shape[1], H, W, device=dev)
        return p

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch ``x`` augmented with the parameters ``p`` of ``sample_params``; no random draws."""
        x = crop_flip(x, p.get("crop"), p.get("flip")) if "crop" in p or "flip" in p else x.contiguous()
        x = F.to_dtype(x, torch.float32, scale=True)  # [0, 1]
        if "jitter" in p:
            x = color_jitter(x, p["jitter"], p["jitter_order"])
        rotation = rotation_matrix(p["rotation"]) if "rotation" in p else None
        if "ops" in p:
            for k in range(p["ops"].shape[1]):
                x = apply_policy_op(x, p["ops"][:, k], p["magnitudes"][:, k], rotation if k == 0 else None)
        elif rotation is not None:
            x = warp(x, rotation)
        if str(x.device) not in self._consts:
            self._consts[str(x.device)] = tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1).to(x.device)
                                                for v in (self.mean, self.std))
        mean, std = self._consts[str(x.device)]
        x = x.sub_(mean).div_(std)  # what F.normalize computes, without its per-call host-to-device copy
        if "erasing" in p:
            x = erase(x, p["erasing"], p.get("erasing_noise"))
        return x
