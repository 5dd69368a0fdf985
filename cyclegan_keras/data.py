"""Unpaired image data for CycleGAN as `tf.data` pipelines."""

import numpy as np


# -- The built-in synthetic dataset ---------------------------------------------


def synthetic_mapping(images, direction="a2b"):
    """The true translation between the synthetic domains.

    A -> B rolls the colour channels by one (R, G, B -> B, R, G); B -> A rolls
    them back. With one channel it inverts intensities (its own inverse).
    Works on uint8 (0..255) and on float images in [-1, 1].

    Args:
        images: array `(..., channels)`.
        direction: `"a2b"` or `"b2a"`. Defaults to `"a2b"`.
    """
    images = np.asarray(images)
    if images.shape[-1] == 1:
        return 255 - images if images.dtype == np.uint8 else -images
    shift = {"a2b": 1, "b2a": -1}[direction]
    return np.roll(images, shift, axis=-1)


def synthetic_images(domain, count, size=64, channels=3, seed=0):
    """Procedural images of a domain: warm shapes on a cool background (A).

    Domain A holds 1 to 4 random rectangles and ellipses in warm colours on a
    noisy dark-blue background. Domain B is `synthetic_mapping` of images
    drawn the same way but independently (with another seed), so the two
    domains are unpaired while the true A -> B mapping is known exactly:
    learning can be measured against ground truth.

    Args:
        domain: `"A"` or `"B"`.
        count: int. Number of images.
        size: int or `(height, width)`. Defaults to `64`.
        channels: 1 or 3 (1: the luminance of the 3-channel image).
            Defaults to `3`.
        seed: int. The same seed gives the same images. Defaults to `0`.

    Returns:
        uint8 array `(count, height, width, channels)`.
    """
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be 'A' or 'B'. Received: domain={domain!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, 0 if domain == "A" else 1])
    ys, xs = np.mgrid[0:height, 0:width]
    images = np.empty((count, height, width, 3), np.float32)
    for image in images:
        image[:] = rng.uniform([0.0, 0.05, 0.3], [0.1, 0.2, 0.5])
        image += rng.normal(0.0, 0.02, image.shape)
        for _ in range(rng.integers(1, 5)):
            colour = rng.uniform([0.6, 0.2, 0.0], [1.0, 0.7, 0.25])
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
            if rng.random() < 0.5:
                mask = (np.abs(ys - cy) < ry) & (np.abs(xs - cx) < rx)
            else:
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1.0
            image[mask] = colour
    images = np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if channels == 1:
        images = (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        images = np.clip(images + 0.5, 0, 255).astype(np.uint8)[..., None]
    return synthetic_mapping(images, "a2b") if domain == "B" else images
