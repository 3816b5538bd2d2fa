"""The report's augmentations, two ways, from the same run config (``cfg.augment_ops()`` says which are on):

- per-sample (``train_transform``): torchvision.transforms.v2 on one image (PIL or uint8 CHW tensor), run by a
  DataLoader ("torchvision" loader, what the report used);
- batched (``BatchAugment``): the same operations on a whole uint8 NCHW batch on any device, with independent
  random parameters per image and no Python loop over images ("device" loader: the data never waits on the CPU).

``BatchMix`` (MixUp/CutMix with probability ``cfg.mix_prob``, soft targets) serves both loaders.
All randomness comes from torch's global RNGs, so ``torch.manual_seed(s)`` before an epoch replays the epoch.

Pipeline order (both paths): crop(pad 4) -> flip -> colour jitter -> rotation -> RandAugment | AutoAugment
-> to float + normalise -> random erasing; then MixUp/CutMix per batch.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .config import RunConfig

NUM_CLASSES = 10
PADDING = 4                    # RandomCrop(32, padding=4): the standard CIFAR crop
ERASING_SCALE = (0.02, 0.33)   # v2.RandomErasing defaults (area fraction, aspect ratio); value 0 after normalising
ERASING_RATIO = (0.3, 3.3)
ERASING_TRIES = 10             # v2.RandomErasing gives up (erases nothing) after 10 boxes that do not fit
RANDAUGMENT_BINS = 31          # v2.RandAugment's num_magnitude_bins default
AUTOAUGMENT_BINS = 10          # AutoAugment's policies index 10 magnitude bins


def _policy_name(ops: Sequence[str]) -> str | None:
    # RandAugment and AutoAugment are alternatives (the report tried both); RandAugment wins if both are listed
    return "randaugment" if "randaugment" in ops else "autoaugment" if "autoaugment" in ops else None


# ====================================================================================================
# Per-sample path: torchvision.transforms.v2
# ====================================================================================================
def train_transform(cfg: RunConfig, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 CHW tensor or PIL image -> augmented, normalised float CHW tensor, as the report's DataLoader did it.

    The loader feeds PIL images: torchvision's PIL kernels ran this pipeline about 1.6x faster per core than its
    uint8-tensor kernels on 32x32 images (report/benchmarks.md)."""
    ops = cfg.augment_ops()
    steps: list[v2.Transform] = []
    if "crop" in ops:
        steps.append(v2.RandomCrop(32, padding=PADDING))
    if "flip" in ops:
        steps.append(v2.RandomHorizontalFlip())
    if "jitter" in ops and cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 4))
    if "rotation" in ops and cfg.rotation_degrees > 0:
        steps.append(v2.RandomRotation(cfg.rotation_degrees))
    policy = _policy_name(ops)
    if policy == "randaugment":
        steps.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
    elif policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if "erasing" in ops and cfg.erasing_prob > 0:
        steps.append(v2.RandomErasing(p=cfg.erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0))
    return v2.Compose(steps)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 CHW tensor or PIL image -> normalised float CHW tensor (no augmentation)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


# ====================================================================================================
# MixUp / CutMix per batch (both loaders)
# ====================================================================================================
class BatchMix:
    """``(x float NCHW, y int64) -> (x, soft targets float (N, C))``: with probability ``cfg.mix_prob`` the batch
    gets v2.MixUp or v2.CutMix (50/50, one lambda per batch, as torchvision), else one-hot targets.

    Works on device tensors without a host sync: the coin, the choice and lambda are drawn on the CPU RNG
    (torchvision draws them there) and only the mixing itself runs on the tensors' device.
    """

    def __init__(self, cfg: RunConfig, num_classes: int = NUM_CLASSES):
        self.mix_prob = cfg.mix_prob
        self.num_classes = num_classes
        self.mix = v2.RandomChoice([v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes),
                                    v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes)])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix_prob > 0 and float(torch.rand(())) < self.mix_prob:
            return self.mix(x, y)
        return x, nnf.one_hot(y, self.num_classes).float()


# ====================================================================================================
# Batched path: the same operations on whole batches (written by hand: torchvision v2 draws one set of
# parameters per call, i.e. per batch, and kornia's RandAugment picks its ops per batch too)
# ====================================================================================================
# One op list for RandAugment and AutoAugment; names as torchvision's. Each image runs one op per slot.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
OP = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _op_table(space: dict, num_bins: int, magnitude_bin: int | None, H: int, W: int):
    """Per op: unsigned magnitude at ``magnitude_bin`` and whether torchvision flips its sign at random."""
    mags, signed = [], []
    for name in OPS:
        fn, sgn = space.get(name, (lambda *a: None, False))
        m = fn(num_bins, H, W)
        mags.append(0.0 if m is None or magnitude_bin is None else float(m[magnitude_bin]))
        signed.append(bool(sgn))
    return mags, signed


# Colour ops on float [0, 1] batches with one magnitude per image (m: shape (n, 1, 1, 1)), torchvision's formulas
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


class BatchAugment:
    """uint8 NCHW batch (any device, channels_last fine) -> augmented, normalised float32 NCHW batch.

    The per-sample pipeline's operations, settings and parameter distributions, drawn independently for every
    image: crop + flip as one gather; ColorJitter's four ops in each image's own random order (one blend per
    position for brightness/contrast/saturation, an HSV hue shift for the images whose turn it is);
    RandomRotation and RandAugment/AutoAugment's geometric ops as one nearest-neighbour ``grid_sample`` per slot
    with per-image matrices (torchvision's affine convention: each op matches ``F.affine``/``F.rotate`` pixel
    for pixel); colour ops with torchvision's formulas; RandomErasing's box sampling vectorised over images and
    tries. No Python loop over images. Differences from the per-sample path, all within rounding: values stay
    float between ops (torchvision rounds to uint8 after each), and RandomRotation is composed with the first
    slot's geometric op into a single resampling. ``last_params`` keeps the latest batch's random draws (tests).
    """

    def __init__(self, cfg: RunConfig, mean: Sequence[float], std: Sequence[float], dispatch: str = "auto"):
        ops = cfg.augment_ops()
        if dispatch not in ("auto", "masked", "indexed"):
            raise ValueError(f"dispatch {dispatch!r}: expected auto, masked or indexed")
        self.dispatch = dispatch
        self.crop = "crop" in ops
        self.flip = "flip" in ops
        self.jitter = cfg.color_jitter if "jitter" in ops else 0.0
        self.rotation = cfg.rotation_degrees if "rotation" in ops else 0.0
        self.policy = _policy_name(ops)
        self.num_ops = cfg.randaugment_ops if self.policy == "randaugment" else 2
        self.magnitude = cfg.randaugment_magnitude
        self.erasing_prob = cfg.erasing_prob if "erasing" in ops else 0.0
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._tables: dict = {}
        self._consts: dict = {}
        self.last_params: dict[str, torch.Tensor] = {}

    def _const(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Constant tensors, copied to the device once: a host-to-device copy per batch would be a host sync."""
        key = str(device)
        if key not in self._consts:
            self._consts[key] = {name: torch.tensor(value, dtype=torch.float32).view(-1, 1, 1).to(device)
                                 for name, value in (("mean", self.mean), ("std", self.std))}
        return self._consts[key]

    # ------------------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment expects a uint8 (N, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        self.last_params = {}
        x = self._crop_flip(x) if self.crop or self.flip else x.contiguous()
        x = F.to_dtype(x, torch.float32, scale=True)  # [0, 1]
        if self.jitter > 0:
            x = self._color_jitter(x)
        slots = self._sample_policy(x) if self.policy else []
        rotation = self._rotation_matrix(x) if self.rotation > 0 else None
        if rotation is not None and not slots:
            x = self._warp(x, rotation)
        for k, (op, mag) in enumerate(slots):
            x = self._apply_slot(x, op, mag, rotation if k == 0 else None)
        const = self._const(x.device)
        x = x.sub_(const["mean"]).div_(const["std"])  # what F.normalize computes, without its per-call copy
        if self.erasing_prob > 0:
            x = self._erase(x)
        return x

    # --- crop + flip: one gather on uint8 -----------------------------------------------------------
    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        dev = x.device
        rows = torch.arange(H, device=dev).expand(N, H)
        cols = torch.arange(W, device=dev).expand(N, W)
        if self.flip:
            flipped = torch.rand(N, 1, device=dev) < 0.5  # v2.RandomHorizontalFlip(p=0.5)
            cols = torch.where(flipped, W - 1 - cols, cols)
            self.last_params["flip"] = flipped[:, 0]
        pad = PADDING if self.crop else 0
        if self.crop:  # RandomCrop(padding=4): offsets uniform in 0..8 of the padded image = shift -4..4
            dy = torch.randint(0, 2 * pad + 1, (N, 1), device=dev)
            dx = torch.randint(0, 2 * pad + 1, (N, 1), device=dev)
            rows, cols = rows + dy, cols + dx
            self.last_params["crop"] = torch.cat([dy, dx], 1) - pad
        # one flat gather from the zero-padded images (several times faster than 4-D advanced indexing)
        Hp, Wp = H + 2 * pad, W + 2 * pad
        padded = nnf.pad(x, (pad, pad, pad, pad)).flatten(1)
        index = (torch.arange(C, device=dev).view(1, C, 1, 1) * (Hp * Wp) + rows[:, None, :, None] * Wp
                 + cols[:, None, None, :])
        return padded.gather(1, index.flatten(1)).view(N, C, H, W)

    # --- colour jitter: per-image factors and order ---------------------------------------------------
    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        N, dev, j = x.shape[0], x.device, self.jitter

        def uniform(lo, hi):
            return torch.empty(N, device=dev).uniform_(lo, hi)

        b, c, s = (uniform(max(0.0, 1 - j), 1 + j) for _ in range(3))  # v2.ColorJitter's ranges
        hue = uniform(-j / 4, j / 4)
        order = torch.rand(N, 4, device=dev).argsort(1)  # each image its own order, like v2's randperm(4)
        self.last_params["jitter"] = torch.stack([b, c, s, hue], 1)
        return self.jitter_colours(x, b, c, s, hue, order)

    def jitter_colours(self, x, brightness, contrast, saturation, hue, order=None) -> torch.Tensor:
        """v2.ColorJitter with per-image factors, applied in each image's ``order`` (rows of 0=brightness,
        1=contrast, 2=saturation, 3=hue; default that order). At each position one blend serves the three
        linear ops (torchvision's degenerate images: black, mean grey, grey); hue runs on the images whose turn
        it is."""
        N = x.shape[0]
        if order is None:
            order = torch.arange(4, device=x.device).expand(N, 4)
        for k in range(4):
            op = order[:, k].view(N, 1, 1, 1)
            factor = torch.where(op == 0, brightness.view(N, 1, 1, 1), torch.where(
                op == 1, contrast.view(N, 1, 1, 1), torch.where(op == 2, saturation.view(N, 1, 1, 1), 1.0)))
            gray = F.rgb_to_grayscale(x)
            degenerate = torch.where(op == 2, gray, torch.where(op == 1, gray.mean((2, 3), keepdim=True), 0.0))
            x = _blend(x, degenerate, factor)
            x = self._where(x, op.view(N) == 3, lambda xs, i: _adjust_hue(xs, hue[i]))
        return x

    # --- geometry: per-image inverse affine matrices in torchvision's convention, one grid_sample ----
    @staticmethod
    def _inverse_affine(rot, tan_sx, sy, cx, cy, tx, ty) -> torch.Tensor:
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

    def _rotation_matrix(self, x: torch.Tensor) -> torch.Tensor:
        N, dev = x.shape[0], x.device
        angle = torch.empty(N, device=dev).uniform_(-self.rotation, self.rotation)  # v2.RandomRotation
        self.last_params["rotation"] = angle
        zero = torch.zeros(N, device=dev)
        return self._inverse_affine(torch.deg2rad(-angle), zero, zero, zero, zero, zero, zero)  # F.rotate: -angle

    def _geometric_matrix(self, x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """RandAugment's ShearX/Y (about the top-left corner), TranslateX/Y (whole pixels), Rotate; else identity."""
        H, W = x.shape[2:]
        zero = torch.zeros_like(mag)

        def where(name, value, other=zero):
            return torch.where(op == OP[name], value, other)

        corner_x, corner_y = where("ShearX", zero - W / 2), where("ShearX", zero - H / 2)  # F.affine center=[0, 0]
        corner_x, corner_y = where("ShearY", zero - W / 2, corner_x), where("ShearY", zero - H / 2, corner_y)
        return self._inverse_affine(rot=where("Rotate", torch.deg2rad(-mag)), tan_sx=where("ShearX", mag),
                                    sy=where("ShearY", torch.atan(mag)), cx=corner_x, cy=corner_y,
                                    tx=where("TranslateX", torch.trunc(mag)), ty=where("TranslateY", torch.trunc(mag)))

    @staticmethod
    def _warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour warp with zero fill on torchvision's pixel grid (its ``_affine_grid`` + grid_sample,
        align_corners=False), the grid computed elementwise: cheaper than a bmm with 3-wide rows."""
        N, _, H, W = x.shape
        ys = torch.linspace((1 - H) / 2, (H - 1) / 2, H, device=x.device).view(1, H, 1)  # pixel centres,
        xs = torch.linspace((1 - W) / 2, (W - 1) / 2, W, device=x.device).view(1, 1, W)  # origin mid-image
        m = inverse.view(N, 9, 1, 1)
        gx = (m[:, 0] * xs + m[:, 1] * ys + m[:, 2]) / (W / 2)
        gy = (m[:, 3] * xs + m[:, 4] * ys + m[:, 5]) / (H / 2)
        return nnf.grid_sample(x, torch.stack([gx, gy], -1), mode="nearest", padding_mode="zeros",
                               align_corners=False)

    # --- RandAugment / AutoAugment ------------------------------------------------------------------
    def _table(self, H: int, W: int, device: torch.device) -> dict[str, torch.Tensor]:
        """torchvision's op lists, magnitude mappings and (AutoAugment) CIFAR-10 policies as device tensors."""
        key = (H, W, str(device))
        if key not in self._tables:  # built once per size/device: no host-to-device copy per batch
            if self.policy == "randaugment":
                space = v2.RandAugment._AUGMENTATION_SPACE
                mags, signed = _op_table(space, RANDAUGMENT_BINS, self.magnitude, H, W)
                table = {"choices": [OP[name] for name in space], "mags": mags, "signed": signed}
            else:
                space = v2.AutoAugment._AUGMENTATION_SPACE
                policies = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies  # 25 x (op, prob, bin) x 2
                table = {"op": [[OP[name] for name, _, _ in pol] for pol in policies],
                         "prob": [[prob for _, prob, _ in pol] for pol in policies],
                         "mag": [[_op_table(space, AUTOAUGMENT_BINS, i, H, W)[0][OP[name]] for name, _, i in pol]
                                 for pol in policies],
                         "signed": _op_table(space, AUTOAUGMENT_BINS, None, H, W)[1]}
            self._tables[key] = {k: torch.tensor(v, device=device) for k, v in table.items()}
        return self._tables[key]

    def _sample_policy(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per slot: (op index into OPS, signed magnitude), one per image."""
        N, dev = x.shape[0], x.device
        t = self._table(x.shape[2], x.shape[3], dev)
        slots = []
        if self.policy == "randaugment":  # each slot: one of the 14 ops uniformly, torchvision's magnitude
            for _ in range(self.num_ops):
                op = t["choices"][torch.randint(len(t["choices"]), (N,), device=dev)]
                slots.append((op, t["mags"][op]))
        else:  # AutoAugment CIFAR-10: one of 25 sub-policies; each of its two ops runs with its probability
            policy = torch.randint(t["op"].shape[0], (N,), device=dev)
            for k in range(2):
                apply = torch.rand(N, device=dev) <= t["prob"][policy, k]
                slots.append((torch.where(apply, t["op"][policy, k], OP["Identity"]), t["mag"][policy, k]))
        signed = []
        for op, mag in slots:
            flip_sign = t["signed"][op] & (torch.rand(N, device=dev) <= 0.5)
            signed.append((op, torch.where(flip_sign, -mag, mag)))
        self.last_params["ops"] = torch.stack([op for op, _ in signed], 1)
        self.last_params["magnitudes"] = torch.stack([m for _, m in signed], 1)
        return signed

    def _apply_slot(self, x, op, mag, first_warp=None):
        """One RandAugment/AutoAugment slot: each image runs the op it drew (``first_warp``: RandomRotation,
        composed with this slot's geometric op into one warp)."""
        geometric = self._geometric_matrix(x, op, mag)
        if first_warp is not None:
            geometric = first_warp @ geometric
        is_geometric = (op >= OP[GEOMETRIC[0]]) & (op <= OP[GEOMETRIC[-1]])  # contiguous in OPS
        x = self._where(x, None if first_warp is not None else is_geometric,
                        lambda xs, i: self._warp(xs, geometric[i]))
        for name, fn in COLOUR_OPS.items():
            x = self._where(x, op == OP[name], lambda xs, i: fn(xs, mag[i].view(-1, 1, 1, 1)))
        return x

    def _where(self, x, mask, fn):
        """``fn`` applied to the images where ``mask`` holds (all if None). On CUDA: computed for the whole batch
        and selected with torch.where (no host sync; the GPU has cycles to spare). On CPU: only the selected
        images (boolean indexing needs the count, a sync that costs nothing there), which is several times faster.
        Both give the same result (tested)."""
        if mask is None:
            return fn(x, slice(None))
        dispatch = self.dispatch if self.dispatch != "auto" else ("indexed" if x.device.type == "cpu" else "masked")
        if dispatch == "masked":
            return torch.where(mask.view(-1, 1, 1, 1), fn(x, slice(None)), x)
        idx = mask.nonzero().squeeze(1)
        if len(idx):
            x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))  # x is this call's own intermediate
        return x

    # --- random erasing: torchvision's box sampling, vectorised over images and tries ---------------
    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        N, _, H, W = x.shape
        dev = x.device
        area = H * W * torch.empty(N, ERASING_TRIES, device=dev).uniform_(*ERASING_SCALE)
        log_ratio = torch.empty(N, ERASING_TRIES, device=dev).uniform_(math.log(ERASING_RATIO[0]),
                                                                       math.log(ERASING_RATIO[1]))
        h = torch.round(torch.sqrt(area * torch.exp(log_ratio)))
        w = torch.round(torch.sqrt(area / torch.exp(log_ratio)))
        fits = (h < H) & (w < W)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # torchvision takes the first box that fits
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        top = torch.floor(torch.rand(N, device=dev) * (H - h + 1))
        left = torch.floor(torch.rand(N, device=dev) * (W - w + 1))
        erase = (torch.rand(N, device=dev) < self.erasing_prob) & fits.any(1)
        self.last_params["erasing"] = torch.stack([erase.float(), top, left, h, w], 1)
        rows = torch.arange(H, device=dev).view(1, H, 1)
        cols = torch.arange(W, device=dev).view(1, 1, W)
        box = ((rows >= top.view(N, 1, 1)) & (rows < (top + h).view(N, 1, 1))
               & (cols >= left.view(N, 1, 1)) & (cols < (left + w).view(N, 1, 1)) & erase.view(N, 1, 1))
        return x.masked_fill(box[:, None], 0.0)


# ====================================================================================================
# Loaders
# ====================================================================================================
def resolve_loader_kind(name: str, device: torch.device | str) -> str:
    """``auto`` -> "device" on CUDA (data resident on the GPU), "torchvision" on CPU."""
    if name == "auto":
        return "device" if torch.device(device).type == "cuda" else "torchvision"
    if name not in ("torchvision", "device"):
        raise ValueError(f"--loader {name!r}: expected auto, torchvision or device")
    return name


def resolve_channels_last(channels_last: bool | None, device: torch.device | str) -> bool:
    """cfg.channels_last=None -> on, on CUDA (tensor cores want NHWC) and on CPU too: oneDNN's NHWC convolutions
    trained all four models 2-17% faster than NCHW on 2 CPU cores, never slower (report/benchmarks.md)."""
    return True if channels_last is None else bool(channels_last)


def default_num_workers(device: torch.device | str) -> int:
    """Worker processes for the per-sample DataLoader: on CUDA up to 4 (the CPU only feeds the GPU); on CPU none,
    because the training step already uses every core through torch's intra-op threads."""
    return min(4, os.cpu_count() or 1) if torch.device(device).type == "cuda" else 0


def _check_arrays(x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("no images to load")


def _to_device_nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    # HWC numpy -> NCHW view whose memory is NHWC, i.e. channels_last, without a copy on the host
    return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2)


class ArrayDataset(Dataset):
    """Numpy HWC uint8 images + int labels -> (transform(PIL image), label); no transform: uint8 CHW tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform=None):
        self.x, self.y, self.transform = x, np.asarray(y, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.transform is None:
            return torch.from_numpy(self.x[i]).permute(2, 0, 1), int(self.y[i])
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])  # PIL: the faster per-sample kernels


class _MixCollate:
    """Stack the samples, then MixUp/CutMix the batch (in the worker, like the report's custom collate)."""

    def __init__(self, mix: BatchMix):
        self.mix = mix

    def __call__(self, samples):
        return self.mix(*default_collate(samples))


class TorchvisionLoader:
    """Per-sample v2 transforms in a DataLoader (shuffle, drop_last), BatchMix in the collate, then to device."""

    def __init__(self, cfg: RunConfig, x, y, mean, std, device):
        self.device = torch.device(device)
        self.memory_format = (torch.channels_last if resolve_channels_last(cfg.channels_last, self.device)
                              else torch.contiguous_format)
        workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(self.device)
        # non-persistent workers: every epoch's workers are seeded afresh from the global torch RNG
        self.loader = DataLoader(ArrayDataset(x, y, train_transform(cfg, mean, std)),
                                 batch_size=min(cfg.batch_size, len(x)), shuffle=True, drop_last=True,
                                 num_workers=workers, pin_memory=self.device.type == "cuda",
                                 collate_fn=_MixCollate(BatchMix(cfg)), persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, soft in self.loader:
            yield (xb.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   soft.to(self.device, non_blocking=True))


class DeviceLoader:
    """The whole training set resident on the device as uint8 NCHW (channels_last); each epoch a randperm on the
    device, batches sliced from it, BatchAugment + BatchMix on the device. No per-sample Python, no host syncs."""

    def __init__(self, cfg: RunConfig, x, y, mean, std, device):
        self.device = torch.device(device)
        self.memory_format = (torch.channels_last if resolve_channels_last(cfg.channels_last, self.device)
                              else torch.contiguous_format)
        self.x = _to_device_nchw(x, self.device)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64), device=self.device)
        self.batch_size = min(cfg.batch_size, len(self.y))
        self.augment = BatchAugment(cfg, mean, std)
        self.mix = BatchMix(cfg)

    def __len__(self) -> int:
        return len(self.y) // self.batch_size  # drop_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), device=self.device)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            xb, soft = self.mix(self.augment(self.x[idx]), self.y[idx])
            yield xb.contiguous(memory_format=self.memory_format), soft


class EvalLoader:
    """Validation/test batches in order, normalised, ``(x float NCHW, y int64)`` on the device; data resident there."""

    def __init__(self, x, y, mean, std, device, batch_size: int = 256, channels_last: bool | None = None):
        self.device = torch.device(device)
        self.memory_format = (torch.channels_last if resolve_channels_last(channels_last, self.device)
                              else torch.contiguous_format)
        self.x = _to_device_nchw(x, self.device)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64), device=self.device)
        self.mean = torch.tensor([float(m) for m in mean], device=self.device).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std], device=self.device).view(-1, 1, 1)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.y), self.batch_size):
            xb = F.to_dtype(self.x[start:start + self.batch_size], torch.float32, scale=True)
            xb = xb.sub(self.mean).div_(self.std)  # F.normalize's arithmetic, constants already on the device
            yield xb.contiguous(memory_format=self.memory_format), self.y[start:start + self.batch_size]


def make_train_loader(cfg: RunConfig, x: np.ndarray, y: np.ndarray, mean, std, device, kind: str = "torchvision"):
    """Training batches ``(x float NCHW, soft targets (B, 10))`` on ``device``; len() = steps per epoch
    (drop_last; a set smaller than one batch gives one batch of all of it)."""
    _check_arrays(x, y)
    kind = resolve_loader_kind(kind, device)
    if kind == "device":
        return DeviceLoader(cfg, x, y, mean, std, device)
    return TorchvisionLoader(cfg, x, y, mean, std, device)


def make_eval_loader(x: np.ndarray, y: np.ndarray, mean, std, device, batch_size: int = 256,
                     channels_last: bool | None = None) -> EvalLoader:
    """Evaluation batches ``(x float NCHW, y int64)`` on ``device``, in order, nothing dropped."""
    _check_arrays(x, y)
    return EvalLoader(x, y, mean, std, device, batch_size, channels_last)
