"""Training-time augmentations of the Next-ViT recipe, as stateless TensorFlow ops.

Next-ViT trains with the DeiT recipe (timm's ``create_transform`` and ``Mixup``).
The transforms run in this order; the first four per example inside a
``tf.data`` ``map``, the last two per batch after ``batch``:

1. :func:`random_resized_crop` - a box of 8-100% of the area with aspect ratio
   in [3/4, 4/3], resized (bicubic) to the training size. Pixels 0..255.
2. :func:`random_flip` - horizontal flip with probability 0.5.
3. :func:`rand_augment` - RandAugment ``rand-m9-mstd0.5-inc1``: two ops drawn
   from :data:`RAND_AUGMENT_OPS`, each applied with probability 0.5, magnitude
   ~ N(9, 0.5) clipped to [0, 10]. Pixels 0..255.
   Then scale and normalise the image (:func:`keras_nextvit.preprocess_input`).
4. :func:`random_erasing` - with probability 0.25, replace one rectangle of the
   *normalised* image by standard-normal noise (timm mode ``"pixel"``).
5. :func:`smooth_labels` - integer labels to one-hot targets with smoothing 0.1.
6. :func:`mixup_cutmix` - Mixup (alpha 0.8) or CutMix (alpha 1.0), switch
   probability 0.5, one draw per batch, each example paired with the reversed
   batch.

Randomness is stateless. Every function takes ``seed``, an int32/int64 tensor
of shape ``[2]``, and draws only with ``tf.random.stateless_*`` /
``tf.image.stateless_*`` ops on sub-seeds derived from it with
``tf.random.experimental.stateless_split``. The same seed (int32 or int64,
same values) gives bit-identical output, for a given TensorFlow version and
device, so a run that derives each
example's seed from a base seed, the epoch and the example's index, e.g.
``stateless_fold_in(stateless_fold_in(base, epoch), index)``, resumes exactly.
Nothing here uses Python randomness, global TF seeds or Keras layers; all
functions work in graph mode (``tf.function``, ``tf.data``).

Where TensorFlow has no exact counterpart of the PIL operation timm uses, the
closest one is used: RandAugment's rotate/shear/translate sample bilinearly
(timm: bicubic), and its fill colour is one grey level ``fill`` (timm: the
ImageNet mean colour). Each RandAugment op rounds and clips its output to
integers 0..255, as PIL's uint8 images do.
"""

import math

import tensorflow as tf

__all__ = [
    "RAND_AUGMENT_OPS",
    "apply_rand_augment_op",
    "mixup_cutmix",
    "rand_augment",
    "random_erasing",
    "random_flip",
    "random_resized_crop",
    "smooth_labels",
]


def _split(seed, num):
    """``num`` independent seeds (shape ``[2]`` each) derived from ``seed``.

    The seed is cast to int64 first: ``stateless_split`` gives different seeds
    for int32 and int64 input, and the same values should give the same output.
    """
    seed = tf.cast(seed, tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num), num=num)


def _uniform(seed, shape=()):
    """float32 uniform in [0, 1)."""
    return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def _randint(u, n):
    """Integer in ``[0, n)`` from a uniform ``u`` in [0, 1) (``n`` int32 > 0)."""
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float32)), tf.int32), n - 1)


def _box_mask(height, width, top, left, box_h, box_w):
    """Boolean ``[height, width]``, True on the box of rows ``[top, top + box_h)``
    and columns ``[left, left + box_w)``."""
    rows = tf.range(height)
    cols = tf.range(width)
    in_rows = (rows >= top) & (rows < top + box_h)
    in_cols = (cols >= left) & (cols < left + box_w)
    return in_rows[:, None] & in_cols[None, :]


# --------------------------------------------------------------------------
# RandomResizedCrop and flip
# --------------------------------------------------------------------------


def _crop_box(height, width, seed, scale, ratio, attempts=10):
    """torchvision's ``RandomResizedCrop.get_params``: ``(top, left, h, w)``.

    Up to ``attempts`` boxes are drawn at once: area ``U(scale) * H * W``,
    aspect ``exp(U(log ratio))``, ``w = round(sqrt(area * aspect))``,
    ``h = round(sqrt(area / aspect))``; the first that fits is placed uniformly.
    If none fits: a centred crop of the whole image, clamped to ``ratio``.
    """
    s_area, s_ratio, s_top, s_left = _split(seed, 4)
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = h_f * w_f * (scale[0] + (scale[1] - scale[0]) * _uniform(s_area, [attempts]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * _uniform(s_ratio, [attempts]))
    box_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    box_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    top = _randint(_uniform(s_top, [attempts]), height - box_h + 1)
    left = _randint(_uniform(s_left, [attempts]), width - box_w + 1)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # Fallback: the whole image, cropped to the nearest allowed aspect ratio.
    in_ratio = w_f / h_f
    fb_w = tf.where(
        in_ratio > max(ratio), tf.cast(tf.round(h_f * max(ratio)), tf.int32), width
    )
    fb_h = tf.where(
        in_ratio < min(ratio), tf.cast(tf.round(w_f / min(ratio)), tf.int32), height
    )
    found = tf.reduce_any(fits)
    box_h = tf.where(found, box_h[first], fb_h)
    box_w = tf.where(found, box_w[first], fb_w)
    top = tf.where(found, top[first], (height - fb_h) // 2)
    left = tf.where(found, left[first], (width - fb_w) // 2)
    return top, left, box_h, box_w


def random_resized_crop(
    image, size, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bicubic"
):
    """Crop a random box and resize it to ``[size, size]`` (torchvision semantics).

    Args:
        image: ``[H, W, C]`` uint8 or float, values 0..255; H, W may be dynamic.
        size: output side (Python int or scalar tensor).
        seed: int32/int64 tensor of shape ``[2]``.
        scale: range of the box's area as a fraction of the image's.
        ratio: range of the box's width/height, sampled log-uniformly.
        interpolation: a ``tf.image.resize`` method; anti-aliased (like PIL)
            except for ``"nearest"``.

    Returns:
        float32 ``[size, size, C]`` clipped to 0..255.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    top, left, box_h, box_w = _crop_box(shape[0], shape[1], seed, scale, ratio)
    crop = image[top : top + box_h, left : left + box_w]
    crop = tf.cast(crop, tf.float32)
    resized = tf.image.resize(
        crop, [size, size], method=interpolation, antialias=interpolation != "nearest"
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


def random_flip(image, seed):
    """Flip ``[H, W, C]`` left-right with probability 0.5."""
    return tf.image.stateless_random_flip_left_right(image, seed)


# --------------------------------------------------------------------------
# RandAugment ops. Each takes (image, m, sign, fill): the image float32
# [H, W, 3] holding integers 0..255, the magnitude m in [0, 10], a random
# sign +/-1 (used by the ops whose magnitude goes both ways) and the fill
# grey level of the geometric ops. Each magnitude-to-argument map
# ("m/10 * max") is written as m times one Python constant, so that graph
# mode (where Grappler folds chains of constants) and eager mode give the same
# bits.
# --------------------------------------------------------------------------


def _grey(x):
    """ITU-R 601-2 luma (PIL's ``convert("L")``), rounded, shape ``[H, W, 1]``."""
    return tf.round(tf.reduce_sum(x * [0.299, 0.587, 0.114], axis=-1, keepdims=True))


def _blend(degenerate, x, factor):
    """PIL ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``."""
    return degenerate + factor * (x - degenerate)


def _enhance_factor(m, sign):
    """timm's "increasing" enhance level: ``1 +/- m/10 * 0.9`` (at least 0.1)."""
    return tf.maximum(0.1, 1.0 + sign * m * 0.09)


def _affine(x, matrix, fill):
    """Sample ``x`` at ``(a0*x + a1*y + a2, b0*x + b1*y + b2)`` for each output pixel.

    ``matrix`` is ``[a0, a1, a2, b0, b1, b2]`` mapping output pixel indices to
    input ones; bilinear interpolation, ``fill`` outside the image.
    """
    transform = tf.concat([tf.stack(matrix), tf.zeros([2])], axis=0)[None, :]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None],
        transforms=transform,
        output_shape=tf.shape(x)[:2],
        fill_value=tf.cast(fill, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def _auto_contrast(x, m, sign, fill):
    """Stretch each channel linearly so its min is 0 and max 255 (flat channels unchanged)."""
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    stretched = tf.floor((x - lo) * 255.0 / tf.maximum(hi - lo, 1.0))
    return tf.where(hi > lo, stretched, x)


def _equalize(x, m, sign, fill):
    """PIL ``ImageOps.equalize`` per channel.

    With ``h`` the channel's 256-bin histogram, ``N`` its pixel count and
    ``step = (N - h[max value]) // 255``, value ``v`` maps to
    ``min(255, (step // 2 + sum(h[:v])) // step)``; ``step == 0`` leaves it.
    """
    values = tf.reshape(tf.cast(x, tf.int32), [-1, 3])
    bins = tf.math.bincount(values + [0, 256, 512], minlength=768, maxlength=768)
    hist = tf.transpose(tf.reshape(bins, [3, 256]))  # [256, 3]
    count = tf.shape(values)[0]
    top = tf.gather(hist, tf.reduce_max(values, axis=0), axis=0)  # [3, 3], diagonal
    step = (count - tf.linalg.diag_part(top)) // 255
    safe = tf.maximum(step, 1)
    lut = tf.minimum(255, (step // 2 + tf.cumsum(hist, axis=0, exclusive=True)) // safe)
    mapped = tf.gather(tf.transpose(lut), tf.transpose(values), batch_dims=1)  # [3, HW]
    mapped = tf.reshape(tf.transpose(tf.cast(mapped, tf.float32)), tf.shape(x))
    return tf.where(step > 0, mapped, x)


def _invert(x, m, sign, fill):
    """``255 - x``."""
    return 255.0 - x


def _rotate(x, m, sign, fill):
    """Rotate counter-clockwise by ``+/- m/10 * 30`` degrees about the image centre."""
    theta = sign * m * (-math.pi / 60.0)  # PIL turns by -angle: -(m/10 * 30) degrees
    cos, sin = tf.cos(theta), tf.sin(theta)
    shape = tf.cast(tf.shape(x), tf.float32)
    cy, cx = (shape[0] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
    return _affine(
        x,
        [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy],
        fill,
    )


def _posterize(x, m, sign, fill):
    """Keep the top ``bits = 4 - int(m/10 * 4)`` bits of each value (0 bits: black)."""
    bits = 4.0 - tf.floor(m * 0.4)
    quantum = tf.pow(2.0, 8.0 - bits)
    return tf.floor(x / quantum) * quantum


def _solarize(x, m, sign, fill):
    """Invert values at or above ``256 - int(m/10 * 256)``."""
    threshold = 256.0 - tf.floor(m * 25.6)
    return tf.where(x < threshold, x, 255.0 - x)


def _solarize_add(x, m, sign, fill):
    """Add ``int(m/10 * 110)`` to values below 128 (saturating at 255)."""
    add = tf.floor(m * 11.0)
    return tf.where(x < 128.0, tf.minimum(x + add, 255.0), x)


def _color(x, m, sign, fill):
    """Saturation: blend with the grey image by ``1 +/- m/10 * 0.9``."""
    return _blend(_grey(x), x, _enhance_factor(m, sign))


def _contrast(x, m, sign, fill):
    """Blend with the image's mean grey level by ``1 +/- m/10 * 0.9``."""
    mean = tf.round(tf.reduce_mean(_grey(x)))
    return _blend(mean, x, _enhance_factor(m, sign))


def _brightness(x, m, sign, fill):
    """Blend with black, i.e. scale by ``1 +/- m/10 * 0.9``."""
    return x * _enhance_factor(m, sign)


def _sharpness(x, m, sign, fill):
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13; border kept)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.round(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0])
    padding = [[1, 1], [1, 1], [0, 0]]
    inside = tf.pad(tf.ones_like(smooth, tf.bool), padding, constant_values=False)
    degenerate = tf.where(inside, tf.pad(smooth, padding), x)
    return _blend(degenerate, x, _enhance_factor(m, sign))


def _shear(axis):
    def shear(x, m, sign, fill):
        # PIL's affine samples pixel centres, hence the half-pixel offset.
        s = sign * m * 0.03
        one, zero = tf.constant(1.0), tf.constant(0.0)
        if axis == "x":  # x_in = x + s * y
            return _affine(x, [one, s, 0.5 * s, zero, one, zero], fill)
        return _affine(x, [one, zero, zero, s, one, 0.5 * s], fill)  # y_in = y + s * x

    shear.__doc__ = f"Shear along {axis}: factor ``+/- m/10 * 0.3``."
    return shear


def _translate(axis):
    def translate(x, m, sign, fill):
        # The content moves by -pixels: output (x, y) reads input (x + pixels, y).
        side = tf.cast(tf.shape(x)[1 if axis == "x" else 0], tf.float32)
        pixels = sign * m * 0.045 * side
        one, zero = tf.constant(1.0), tf.constant(0.0)
        if axis == "x":
            return _affine(x, [one, zero, pixels, zero, one, zero], fill)
        return _affine(x, [one, zero, zero, zero, one, pixels], fill)

    translate.__doc__ = f"Translate along {axis} by ``+/- m/10 * 0.45`` of the image size."
    return translate


_OPS = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _color,
    "ContrastIncreasing": _contrast,
    "BrightnessIncreasing": _brightness,
    "SharpnessIncreasing": _sharpness,
    "ShearX": _shear("x"),
    "ShearY": _shear("y"),
    "TranslateXRel": _translate("x"),
    "TranslateYRel": _translate("y"),
}

#: timm's ``_RAND_INCREASING_TRANSFORMS``, in its order; an op's index here is
#: its ``op_index`` in :func:`apply_rand_augment_op`.
RAND_AUGMENT_OPS = tuple(_OPS)


def apply_rand_augment_op(image, op_index, magnitude, seed, fill=128):
    """Apply one RandAugment op (always) to a float32 ``[H, W, 3]`` image in 0..255.

    Args:
        image: float32 ``[H, W, 3]``, values 0..255 (rounded to integers first).
        op_index: index into :data:`RAND_AUGMENT_OPS` (int or int32 scalar
            tensor) or an op name.
        magnitude: scalar in [0, 10].
        seed: int32/int64 ``[2]``; draws the op's sign where it has one.
        fill: grey level for pixels that geometric ops bring in from outside.

    Returns:
        float32 ``[H, W, 3]`` holding integers 0..255. Only the chosen op runs.
    """
    if isinstance(op_index, str):
        op_index = RAND_AUGMENT_OPS.index(op_index)
    x = tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0.0, 255.0)
    m = tf.cast(magnitude, tf.float32)
    sign = tf.where(_uniform(seed) > 0.5, -1.0, 1.0)
    branches = [
        (lambda op=op: tf.ensure_shape(op(x, m, sign, fill), x.shape)) for op in _OPS.values()
    ]
    out = tf.switch_case(tf.cast(op_index, tf.int32), branches)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5, fill=128):
    """RandAugment (timm ``rand-m9-mstd0.5-inc1`` by default).

    ``num_ops`` times: pick an op of :data:`RAND_AUGMENT_OPS` uniformly (with
    replacement), draw its magnitude from ``N(magnitude, magnitude_std)``
    clipped to [0, 10] (fixed if ``magnitude_std`` is 0; ``U(0, magnitude)``
    if it is ``inf``, as in timm), and apply it with probability ``prob``.

    Args:
        image: float32 ``[H, W, 3]``, values 0..255.
        seed: int32/int64 ``[2]``.
        fill: grey level the geometric ops bring in (timm: the mean colour).

    Returns:
        float32 ``[H, W, 3]`` in 0..255.
    """
    x = tf.cast(image, tf.float32)
    for slot_seed in _split(seed, num_ops):
        s_choice, s_apply, s_magnitude, s_op = _split(slot_seed, 4)
        op_index = tf.random.stateless_uniform(
            [], s_choice, minval=0, maxval=len(RAND_AUGMENT_OPS), dtype=tf.int32
        )
        if magnitude_std == float("inf"):
            m = magnitude * _uniform(s_magnitude)
        elif magnitude_std > 0:
            m = magnitude + magnitude_std * tf.random.stateless_normal([], s_magnitude)
        else:
            m = tf.constant(magnitude, tf.float32)
        m = tf.clip_by_value(m, 0.0, 10.0)
        x = tf.cond(
            _uniform(s_apply) < prob,
            lambda x=x, i=op_index, m=m, s=s_op: apply_rand_augment_op(x, i, m, s, fill),
            lambda x=x: x,
        )
    return x


# --------------------------------------------------------------------------
# Random erasing
# --------------------------------------------------------------------------

_ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))  # timm's aspect range [0.3, 1/0.3]


def random_erasing(
    image,
    seed,
    probability=0.25,
    area=(0.02, 1 / 3),
    log_ratio=_ERASE_LOG_RATIO,
    max_attempts=10,
):
    """timm ``RandomErasing`` (mode ``"pixel"``, one box) on a normalised image.

    With ``probability``: draw up to ``max_attempts`` boxes of area
    ``U(area) * H * W`` and aspect (h/w) ``exp(U(log_ratio))``, sides rounded;
    the first with ``h < H`` and ``w < W`` is placed uniformly and filled with
    per-pixel, per-channel N(0, 1) noise. If none fits, nothing is erased.

    Args:
        image: float ``[H, W, C]`` (normalised, e.g. by ``preprocess_input``).
        seed: int32/int64 ``[2]``.

    Returns:
        Same shape and dtype as ``image``.
    """
    image = tf.convert_to_tensor(image)
    s_apply, s_area, s_ratio, s_top, s_left, s_noise = _split(seed, 6)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    target = tf.cast(height * width, tf.float32) * (
        area[0] + (area[1] - area[0]) * _uniform(s_area, [max_attempts])
    )
    u_ratio = _uniform(s_ratio, [max_attempts])
    aspect = tf.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    box_h, box_w = box_h[first], box_w[first]
    top = _randint(_uniform(s_top), height - box_h + 1)
    left = _randint(_uniform(s_left), width - box_w + 1)
    erase = (_uniform(s_apply) < probability) & tf.reduce_any(fits)
    mask = _box_mask(height, width, top, left, box_h, box_w) & erase
    noise = tf.random.stateless_normal(shape, s_noise, dtype=image.dtype)
    return tf.where(mask[:, :, None], noise, image)


# --------------------------------------------------------------------------
# Mixup / CutMix and label smoothing
# --------------------------------------------------------------------------


def _beta(seed, alpha):
    """``Beta(alpha, alpha)`` as ``g1 / (g1 + g2)`` with ``g1, g2 ~ Gamma(alpha)``."""
    s1, s2 = _split(seed, 2)
    g1 = tf.random.stateless_gamma([], s1, alpha=alpha)
    g2 = tf.random.stateless_gamma([], s2, alpha=alpha)
    total = g1 + g2
    return tf.where(total > 0, g1 / tf.maximum(total, 1e-30), 0.5)


def _cutmix(images, lam, seed):
    """Paste a box of the reversed batch; returns ``(images, corrected lam)``.

    timm's ``rand_bbox``: ``cut = int(side * sqrt(1 - lam))``, centre uniform
    over the pixels, box ``[c - cut//2, c + cut//2)`` clipped to the image;
    then ``lam = 1 - box area / (H * W)``.
    """
    s_y, s_x = _split(seed, 2)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.floor(tf.cast(height, tf.float32) * cut), tf.int32)
    cut_w = tf.cast(tf.floor(tf.cast(width, tf.float32) * cut), tf.int32)
    cy = tf.random.stateless_uniform([], s_y, minval=0, maxval=height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], s_x, minval=0, maxval=width, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    mask = _box_mask(height, width, y0, x0, y1 - y0, x1 - x0)
    mixed = tf.where(mask[None, :, :, None], images[::-1], images)
    lam = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    return mixed, lam


def mixup_cutmix(
    images, targets, seed, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0
):
    """timm ``Mixup`` in batch mode: one Mixup or CutMix draw for the whole batch.

    With probability ``prob`` (else identity): CutMix with probability
    ``switch_prob`` if both alphas are > 0 (only the enabled one otherwise),
    ``lam ~ Beta(alpha, alpha)`` of the chosen mode, and each example is paired
    with the reversed batch ``x[::-1]``:

    * Mixup: ``lam * x + (1 - lam) * x[::-1]``.
    * CutMix: see :func:`_cutmix`; ``lam`` becomes the kept area fraction.

    Targets become ``lam * t + (1 - lam) * t[::-1]``.

    Args:
        images: float ``[B, H, W, C]``.
        targets: float ``[B, K]`` (one-hot, possibly smoothed).
        seed: int32/int64 ``[2]``.

    Returns:
        ``(images, targets)``, same shapes and dtypes.
    """
    images = tf.convert_to_tensor(images)
    targets = tf.convert_to_tensor(targets)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    s_apply, s_switch, s_lam, s_box = _split(seed, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = _uniform(s_switch) < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    alpha = tf.where(use_cutmix, float(cutmix_alpha), float(mixup_alpha))
    lam = _beta(s_lam, alpha)

    def mix():
        def cutmix():
            return _cutmix(images, lam, s_box)

        def mixup():
            w = tf.cast(lam, images.dtype)
            return w * images + (1.0 - w) * images[::-1], lam

        mixed, lam_used = tf.cond(use_cutmix, cutmix, mixup)
        w = tf.cast(lam_used, targets.dtype)
        return mixed, w * targets + (1.0 - w) * targets[::-1]

    return tf.cond(_uniform(s_apply) < prob, mix, lambda: (images, targets))


def smooth_labels(labels, num_classes, smoothing=0.1):
    """Integer labels ``[B]`` to float32 ``[B, K]`` targets (timm convention).

    The true class gets ``1 - smoothing + smoothing / K``, the others
    ``smoothing / K``; rows sum to 1.
    """
    off = smoothing / num_classes
    return tf.one_hot(
        tf.cast(labels, tf.int32), num_classes, on_value=1.0 - smoothing + off, off_value=off
    )
