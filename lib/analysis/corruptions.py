"""Common corruptions in the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), with numpy and PIL.

Every corruption maps uint8 images ``(N, 32, 32, 3)`` (HWC) to uint8 images of the same shape, at severity 1..5,
deterministically for a seed. The severity constants are those of the authors' published generator
(``make_cifar_c.py`` in hendrycks/robustness, its CIFAR branch), and so are the formulas; the result is cast to
uint8 by truncation, as that script's ``np.uint8(...)``. What differs from that code:

- randomness: a numpy ``Generator`` seeded from (seed, corruption, severity) instead of the global
  ``np.random`` state, so the noise draws differ from the published ``.npy`` files (same distributions);
- impulse_noise: skimage's ``random_noise(mode="s&p")`` rewritten in numpy (each value, per channel, replaced
  with probability ``amount``, half by 0 and half by 1);
- gaussian_blur: skimage's ``gaussian`` (scipy ``gaussian_filter``: truncate 4, nearest border) as a separable
  numpy filter with the same kernel and border;
- defocus_blur: the same 17 x 17 disk kernel anti-aliased with a 3 x 3 Gaussian, built in numpy instead of
  ``cv2.GaussianBlur``, and applied in numpy with cv2's default reflect-101 border instead of ``cv2.filter2D``;
- brightness and saturate: HSV via ``matplotlib.colors`` instead of ``skimage.color`` (same conversion).

CIFAR-10-C's own saturate severities are not monotone (1 and 2 desaturate, 3-5 oversaturate): kept as published.
Not implemented (they need cv2, Wand/ImageMagick or image files): glass, motion and zoom blur, snow, frost, fog,
spatter, elastic transform.
"""
from __future__ import annotations

import io
import zlib
from typing import Callable

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
CHUNK = 1000  # images corrupted at a time

# make_cifar_c.py's constants, one entry per severity 1..5
CONSTANTS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],  # std of additive noise on [0, 1]
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson photon count per unit intensity
    "impulse_noise": [.01, .02, .03, .05, .07],  # salt-and-pepper amount
    "speckle_noise": [.06, .1, .12, .16, .2],  # std of multiplicative noise
    "gaussian_blur": [.4, .6, 0.7, .8, 1],  # sigma in pixels
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # (disk radius, alias blur)
    "contrast": [.75, .5, .4, .3, 0.15],  # factor towards each image's per-channel mean
    "brightness": [.05, .1, .15, .2, .3],  # added to HSV value
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],  # HSV saturation * a + b
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # box-downscale factor
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 the way the published script does it: clip, * 255, truncate."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


def gaussian_noise(images, c, rng):
    x = _unit(images)
    return _to_uint8(x + rng.normal(size=x.shape, scale=c))


def shot_noise(images, c, rng):
    return _to_uint8(rng.poisson(_unit(images) * c) / c)


def impulse_noise(images, c, rng):
    x = _unit(images)
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_uint8(x)


def speckle_noise(images, c, rng):
    x = _unit(images)
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=c))


def _filter(images: np.ndarray, kernels: list[np.ndarray], pad_mode: str) -> np.ndarray:
    """Filter each channel of uint8 (N, H, W, 3) images, as [0, 1] floats, with 2-D kernels applied in turn after
    one padding (correlation, as cv2.filter2D); a separable blur passes its column and row kernels. Written as a
    sum of shifted copies: the kernels are small, and this is faster on CPU than a grouped float64 conv2d."""
    x = _unit(images)
    r0 = sum(k.shape[0] // 2 for k in kernels)
    r1 = sum(k.shape[1] // 2 for k in kernels)
    x = np.pad(x, ((0, 0), (r0, r0), (r1, r1), (0, 0)), mode=pad_mode)  # "reflect" is reflect-101
    for k in kernels:
        h, w = x.shape[1] - k.shape[0] + 1, x.shape[2] - k.shape[1] + 1
        out = np.zeros((len(x), h, w, 3))
        for (i, j), weight in np.ndenumerate(k):
            if weight:
                out += weight * x[:, i:i + h, j:j + w]
        x = out
    return x


def _gaussian_1d(sigma: float, radius: int) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images, c, rng):
    k = _gaussian_1d(c, int(4.0 * c + 0.5))  # scipy.ndimage.gaussian_filter's radius: truncate 4.0
    return _to_uint8(_filter(images, [k[:, None], k[None, :]], "edge"))


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.py's ``disk`` for radius <= 8: a 17 x 17 aliased disk, normalised, then a 3 x 3 Gaussian."""
    L = np.arange(-8, 8 + 1)
    X, Y = np.meshgrid(L, L)
    disk = (X ** 2 + Y ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_1d(alias_blur, 1)  # cv2.getGaussianKernel(3, sigma)
    padded = np.pad(disk, 1, mode="reflect")  # cv2.GaussianBlur's default border: reflect-101
    n = len(L)
    return sum(g[i] * g[j] * padded[i:i + n, j:j + n] for i in range(3) for j in range(3))


def defocus_blur(images, c, rng):
    k = disk_kernel(*c)
    rows, cols = np.flatnonzero(k.any(1)), np.flatnonzero(k.any(0))
    # the published 17 x 17 kernel is zero outside a few central pixels at these radii: cropped (kept centred)
    r0 = max(8 - rows[0], rows[-1] - 8)
    r1 = max(8 - cols[0], cols[-1] - 8)
    return _to_uint8(_filter(images, [k[8 - r0:9 + r0, 8 - r1:9 + r1]], "reflect"))


def contrast(images, c, rng):
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - means) * c + means)


def brightness(images, c, rng):
    hsv = rgb_to_hsv(_unit(images))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def saturate(images, c, rng):
    hsv = rgb_to_hsv(_unit(images))
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def pixelate(images, c, rng):
    size = int(32 * c)
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX).resize((32, 32), Image.BOX))
                     for im in images])


def jpeg_compression(images, c, rng):
    out = []
    for im in images:
        buffer = io.BytesIO()
        Image.fromarray(im).save(buffer, "JPEG", quality=c)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(out)


CORRUPTIONS: dict[str, Callable] = {name: globals()[name] for name in CONSTANTS}


def parse_corruptions(text: str) -> list[str]:
    """``all`` or a comma list of names -> names in CORRUPTIONS order; ValueError naming an unknown one."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"--corruptions {text!r}: unknown corruption {', '.join(unknown) or '(none given)'}; "
                         f"choose all or from {', '.join(CORRUPTIONS)}")
    return [n for n in CORRUPTIONS if n in names]


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> the same images under corruption ``name`` at ``severity`` (1..5).

    Deterministic: the same (images, name, severity, seed) always gives the same result.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r}: must be one of 1..5")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        return images.copy()
    # one stream per (seed, corruption, severity): adding a corruption never changes another's noise
    rng = np.random.default_rng([seed % 2**32, zlib.crc32(name.encode()), severity])
    fn, c = CORRUPTIONS[name], CONSTANTS[name][severity - 1]
    # in chunks: the float64 intermediates of 10,000 images would take a few GB at once
    return np.concatenate([fn(images[i:i + CHUNK], c, rng) for i in range(0, len(images), CHUNK)])
