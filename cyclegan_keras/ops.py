"""Padding and cropping of NHWC batches, for the layers and for running a generator at any size.

Index-based padding takes any pad width on any (dynamic) size, unlike
`tf.pad(mode="REFLECT")`, and lowers to gathers, which TFLite and XLA support.
"""

import tensorflow as tf

PAD_MODES = ("reflect", "replicate", "zero")


def _source_indices(size, before, after, mode):
    index = tf.range(-before, size + after)
    if mode == "replicate":
        return tf.clip_by_value(index, 0, size - 1)
    # Reflect without repeating the edge (PyTorch's), folded as often as any pad width needs. The
    # reflection is even (index -i reads i), so the modulo sees no negative number: tf2onnx lowers an
    # integer FloorMod to x - (x / y) * y with a truncating division, wrong for negative x.
    period = tf.maximum(2 * size - 2, 1)
    folded = tf.math.floormod(tf.abs(index), period)
    return tf.where(folded < size, folded, period - folded)


def pad_spatial(images, padding, mode="reflect"):
    """Pads the height and width of an NHWC batch by `((top, bottom), (left, right))`, ints or int tensors."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {PAD_MODES}. Received: mode={mode!r}")
    (top, bottom), (left, right) = padding
    paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
    if mode == "zero":
        return tf.pad(images, paddings)
    height, width = _spatial_size(images)
    if mode == "reflect" and _fits_mirror_pad((top, bottom), height) and _fits_mirror_pad((left, right), width):
        # MirrorPad is faster than a gather, forward and backward, but needs each pad below the side.
        return tf.pad(images, paddings, mode="REFLECT")
    images = tf.gather(images, _source_indices(height, top, bottom, mode), axis=1)
    return tf.gather(images, _source_indices(width, left, right, mode), axis=2)


def _fits_mirror_pad(pads, size):
    if not all(isinstance(p, int) for p in pads):
        return False
    return not isinstance(size, int) or max(pads) < size


def _spatial_size(images):
    """(height, width), as Python ints where static, so shapes stay known."""
    dynamic = tf.shape(images)
    return tuple(images.shape[axis] if images.shape[axis] is not None else dynamic[axis] for axis in (1, 2))


def pad_to_multiple(images, multiple, min_size=1):
    """Reflect-pads an NHWC batch, centred, to sides that are multiples of `multiple` and at least `min_size`.

    Returns:
        `(padded, crop)`, `crop` undoing the padding with `crop_spatial`.
    """
    pads = []
    for size in _spatial_size(images):
        target = size + (multiple - size % multiple) % multiple
        floor = -(-min_size // multiple) * multiple
        total = (tf.maximum(target, floor) if not isinstance(size, int) else max(target, floor)) - size
        pads.append((total // 2, total - total // 2))
    return pad_spatial(images, pads, mode="reflect"), tuple(pads)


def crop_spatial(images, crop):
    """Removes `crop = ((top, bottom), (left, right))` pixels from an NHWC batch."""
    (top, bottom), (left, right) = crop
    height, width = _spatial_size(images)
    return images[:, top : height - bottom, left : width - right, :]
