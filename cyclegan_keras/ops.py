"""Padding and cropping of NHWC batches, for the layers and for running a generator at any size.

Index-based padding takes any pad width on any (dynamic) size, unlike
`tf.pad(mode="REFLECT")`, and lowers to gathers, which TFLite and XLA support.
"""

import tensorflow as tf

PAD_MODES = ("reflect", "replicate", "zero")


def _source_indices(size, before, after, mode):
    """Indices into an axis of length `size` that produce the padded axis."""
    index = tf.range(-before, size + after)
    if mode == "replicate":
        return tf.clip_by_value(index, 0, size - 1)
    # Reflect without repeating the edge (PyTorch's ReflectionPad2d), folded
    # as often as needed so any pad width is valid.
    period = tf.maximum(2 * size - 2, 1)
    folded = tf.math.floormod(index, period)
    return tf.where(folded < size, folded, period - folded)


def pad_spatial(images, padding, mode="reflect"):
    """Pads the height and width axes of an NHWC batch.

    Args:
        images: tensor of shape `(batch, height, width, channels)`.
        padding: `((top, bottom), (left, right))` of Python ints or scalar
            int tensors.
        mode: one of `"reflect"`, `"replicate"`, `"zero"`.

    Returns:
        The padded batch.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {PAD_MODES}. Received: mode={mode!r}")
    (top, bottom), (left, right) = padding
    paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
    if mode == "zero":
        return tf.pad(images, paddings)
    height, width = _spatial_size(images)
    if mode == "reflect" and _fits_mirror_pad((top, bottom), height) and _fits_mirror_pad((left, right), width):
        # The networks' own small fixed pads: MirrorPad is faster than a
        # gather, forward and backward, but needs each pad below the side.
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
    """Reflect-pads an NHWC batch so height and width are multiples of `multiple`.

    Sides are also padded up to at least `min_size`. The pad is split as
    evenly as possible between both sides so the content stays centred.

    Returns:
        `(padded, crop)` where `crop = ((top, bottom), (left, right))`, to
        undo the padding with `crop_spatial`.
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
