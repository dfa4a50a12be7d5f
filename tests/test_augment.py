"""The training augmentations: determinism, shapes, and each transform's maths."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nextvit import augment

H, W = 40, 56
OPS = augment.RAND_AUGMENT_OPS


def seed(a, b=0):
    return tf.constant([a, b], tf.int64)


def noise_image(h=H, w=W, salt=0):
    """A random uint8-valued float32 image."""
    return np.random.default_rng(salt).integers(0, 256, (h, w, 3)).astype("float32")


def gradient_image():
    """Brightness rising left to right, the same in every row and channel."""
    row = np.linspace(0.0, 255.0, W, dtype="float32")
    return np.broadcast_to(row[None, :, None], (H, W, 3)).copy()


def op(name, image, magnitude, s=(0, 0)):
    return augment.apply_rand_augment_op(image, OPS.index(name), magnitude, seed(*s)).numpy()


def batch():
    images = np.random.default_rng(1).normal(size=(4, H, W, 3)).astype("float32")
    targets = augment.smooth_labels([0, 1, 2, 3], 5, smoothing=0.0)
    return images, targets


# Each random function as seed -> outputs (NumPy), for the determinism test.
RANDOM_FUNCTIONS = {
    "random_resized_crop": lambda s: augment.random_resized_crop(noise_image(), 24, s),
    "random_flip": lambda s: augment.random_flip(noise_image(), s),
    "rand_augment": lambda s: augment.rand_augment(noise_image(), s),
    "rotate": lambda s: augment.apply_rand_augment_op(noise_image(), OPS.index("Rotate"), 5, s),
    "random_erasing": lambda s: augment.random_erasing(noise_image() / 255.0, s, probability=0.5),
    "mixup_cutmix": lambda s: augment.mixup_cutmix(*batch(), s),
}


@pytest.mark.parametrize("name", sorted(RANDOM_FUNCTIONS))
def test_same_seed_same_output_other_seeds_differ(name):
    fn = RANDOM_FUNCTIONS[name]
    first = tf.nest.map_structure(np.asarray, fn(seed(3, 4)))
    again = tf.nest.map_structure(np.asarray, fn(tf.constant([3, 4], tf.int32)))
    tf.nest.map_structure(np.testing.assert_array_equal, first, again)
    others = [tf.nest.flatten(fn(seed(k, 4)))[0].numpy() for k in range(8)]
    assert any(not np.array_equal(other, tf.nest.flatten(first)[0]) for other in others)


# --- random_resized_crop and random_flip ------------------------------------


def test_random_resized_crop_dynamic_shape_in_tf_function():
    spec = [tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)]
    crop = tf.function(lambda image, s: augment.random_resized_crop(image, 24, s), spec)
    image = noise_image().astype("uint8")
    for k in range(5):
        out = crop(image, seed(k))
        assert out.shape == (24, 24, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    graph = crop.get_concrete_function()
    assert graph.structured_outputs.shape.as_list() == [24, 24, 3]


def test_random_resized_crop_constant_image_stays_constant():
    image = np.full((H, W, 3), 77, "uint8")
    for k in range(10):
        out = augment.random_resized_crop(image, 33, seed(k)).numpy()
        np.testing.assert_allclose(out, 77.0, atol=1e-3)


def test_random_resized_crop_keeps_a_gradient_monotonic():
    for k in range(10):
        out = augment.random_resized_crop(gradient_image(), 32, seed(k)).numpy()
        assert np.diff(out, axis=1).min() >= -1e-3  # still rises left to right
        np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-3)


def test_random_resized_crop_fallback_is_a_centre_crop():
    # No box of 2-3x the image's area fits: torchvision falls back to the
    # centred crop of the whole image, clamped to the ratio range (here 1:1).
    wide, tall = noise_image(), noise_image(W, H)
    for image, expected in [(wide, wide[:, 8:48]), (tall, tall[8:48, :])]:
        out = augment.random_resized_crop(
            image, H, seed(0), scale=(2.0, 3.0), ratio=(1.0, 1.0), interpolation="nearest"
        )
        np.testing.assert_array_equal(out.numpy(), expected)


def test_random_resized_crop_full_box_is_a_resize():
    # scale 1 and the image's own aspect ratio: the box is the whole image.
    image = noise_image()
    out = augment.random_resized_crop(image, 20, seed(5), scale=(1.0, 1.0), ratio=(W / H, W / H))
    expected = tf.image.resize(image, [20, 20], method="bicubic", antialias=True)
    np.testing.assert_allclose(out.numpy(), np.clip(expected.numpy(), 0, 255), atol=1e-4)


def test_random_flip_flips_or_not():
    image = noise_image()
    flipped = 0
    for k in range(12):
        out = augment.random_flip(image, seed(k)).numpy()
        if np.array_equal(out, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 0 < flipped < 12


# --- RandAugment ops ----------------------------------------------------------


def test_op_names():
    assert OPS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
        "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
        "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel",
    )  # fmt: skip


@pytest.mark.parametrize("name", OPS)
def test_op_output_in_tf_function(name):
    spec = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)]
    fn = tf.function(lambda x, s: augment.apply_rand_augment_op(x, OPS.index(name), 7.0, s), spec)
    out = fn(noise_image(), seed(1)).numpy()
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out, np.round(out))  # uint8 values, like PIL
    np.testing.assert_array_equal(out, op(name, noise_image(), 7.0, (1, 0)))  # eager == graph


@pytest.mark.parametrize(
    "name",
    ["Rotate", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
     "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
     "TranslateYRel"],
)  # fmt: skip
def test_op_at_magnitude_zero_is_identity(name):
    image = noise_image()
    np.testing.assert_array_equal(op(name, image, 0.0), image)


def test_invert_twice_is_identity():
    image = noise_image()
    once = op("Invert", image, 5.0)
    np.testing.assert_array_equal(once, 255 - image)
    np.testing.assert_array_equal(op("Invert", once, 5.0), image)


def test_auto_contrast_stretches_each_channel():
    image = 60 + np.round(noise_image() / 255 * 40)  # 60..100
    image[..., 2] = 90  # a flat channel is left alone
    out = op("AutoContrast", image, 5.0)
    assert out[..., :2].min() == 0 and out[..., :2].max() == 255
    np.testing.assert_array_equal(out[..., 2], 90)
    order = np.argsort(image[..., 0], axis=None, kind="stable")  # the map is monotonic
    assert np.all(np.diff(out[..., 0].ravel()[order]) >= 0)


def test_equalize_flattens_the_histogram():
    rng = np.random.default_rng(2)
    image = np.clip(np.round(rng.normal(100, 8, (H, W, 3))), 0, 255).astype("float32")
    out = op("Equalize", image, 5.0)

    def cdf_gap(x):  # largest distance of the value distribution from uniform
        cdf = np.cumsum(np.bincount(x.astype(int).ravel(), minlength=256)) / x.size
        return np.abs(cdf - np.arange(1, 257) / 256).max()

    assert cdf_gap(out) < 0.1 < cdf_gap(image)
    order = np.argsort(image[..., 1], axis=None, kind="stable")
    assert np.all(np.diff(out[..., 1].ravel()[order]) >= 0)


@pytest.mark.parametrize("magnitude, bits", [(0.0, 4), (3.0, 3), (5.0, 2), (9.0, 1), (10.0, 0)])
def test_posterize_keeps_the_top_bits(magnitude, bits):
    image = noise_image()
    out = op("PosterizeIncreasing", image, magnitude)
    quantum = 2 ** (8 - bits)
    np.testing.assert_array_equal(out % quantum, 0)
    assert np.all((image - out >= 0) & (image - out < quantum))


def test_solarize_and_solarize_add():
    image = noise_image()
    # magnitude 5: threshold 256 - 128 = 128
    expected = np.where(image < 128, image, 255 - image)
    np.testing.assert_array_equal(op("SolarizeIncreasing", image, 5.0), expected)
    # magnitude 10: add 110 below 128
    expected = np.where(image < 128, np.minimum(image + 110, 255), image)
    np.testing.assert_array_equal(op("SolarizeAdd", image, 10.0), expected)


@pytest.mark.parametrize("name", ["BrightnessIncreasing", "ContrastIncreasing", "ColorIncreasing"])
def test_enhance_ops_blend_with_their_degenerate_image(name):
    image = np.round(noise_image() * [1.0, 0.6, 0.2]).astype("float32")  # reddish
    grey = np.round(image @ np.array([0.299, 0.587, 0.114], "float32"))[..., None]
    degenerate = {
        "BrightnessIncreasing": np.zeros_like(image),
        "ContrastIncreasing": np.full_like(image, np.round(grey.mean())),
        "ColorIncreasing": np.broadcast_to(grey, image.shape),
    }[name]
    outs = {}
    for k in range(8):  # the random sign gives one of two factors: 1 +/- 6/10 * 0.9
        out = op(name, image, 6.0, (k, 0))
        outs[out.tobytes()] = out
    assert len(outs) == 2  # the two signs
    for factor in (1 - 0.54, 1 + 0.54):
        expected = np.clip(np.round(degenerate + factor * (image - degenerate)), 0, 255)
        assert any(np.abs(out - expected).max() <= 1 for out in outs.values())


def test_sharpness_keeps_the_border_and_flat_images():
    image = noise_image()
    out = op("SharpnessIncreasing", image, 8.0)
    border = np.ones((H, W), bool)
    border[1:-1, 1:-1] = False
    np.testing.assert_array_equal(out[border], image[border])
    assert not np.array_equal(out[~border], image[~border])
    flat = np.full((H, W, 3), 50.0, "float32")
    np.testing.assert_array_equal(op("SharpnessIncreasing", flat, 8.0), flat)


def bright_pixel(h=H, w=W, y=20, x=28):
    image = np.zeros((h, w, 3), "float32")
    image[y, x] = 255
    return image


def peak(image):
    return np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])


@pytest.mark.parametrize(
    "name, magnitude, shift",
    [
        ("TranslateXRel", 9 / (0.045 * W), (0, 9)),  # 0.45 * W * m / 10 = 9 pixels
        ("TranslateYRel", 5.0, (9, 0)),  # 0.45 * 40 * 0.5 = 9 pixels
        ("ShearX", 10.0, (0, 6)),  # x_in = x + 0.3 * (y + 0.5): 0.3 * 20.5 = 6.15
        ("ShearY", 10.0, (9, 0)),  # y_in = y + 0.3 * (x + 0.5): 0.3 * 28.5 = 8.55
    ],
)
def test_geometric_ops_move_a_bright_pixel(name, magnitude, shift):
    moves = set()
    for k in range(6):
        out = op(name, bright_pixel(), magnitude, (k, 0))
        dy, dx = np.subtract(peak(out), (20, 28))
        assert (abs(dy), abs(dx)) == shift
        moves.add((int(dy), int(dx)))
    assert len(moves) == 2  # both directions


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear_samples_at_pixel_centres(name):
    # On a ramp f = k * u along the sheared axis, the two signs read
    # f(u +/- 0.3 * (v + 0.5)) (PIL's affine works on pixel centres), so their
    # difference, averaged over columns away from the fill, is 2 k 0.3 (v + 0.5)
    # (v: the index along the other axis).
    image = gradient_image() if name == "ShearX" else gradient_image().transpose(1, 0, 2)
    outs = [op(name, image, 10.0, (k, 0)) for k in range(6)]
    outs = {out.tobytes(): out.transpose(1, 0, 2) if name == "ShearY" else out for out in outs}
    assert len(outs) == 2
    first, second = outs.values()
    diff = np.abs(first - second)[:, 20:36, 0].mean(axis=1)
    slope, intercept = np.polyfit(np.arange(H), diff, 1)
    k = 255 / (W - 1)
    assert slope == pytest.approx(2 * k * 0.3, rel=0.02)
    assert intercept == pytest.approx(k * 0.3, abs=0.3)


def test_translate_fills_with_the_fill_value():
    out = op("TranslateXRel", np.zeros((H, W, 3), "float32"), 9 / (0.045 * W))
    filled = out[:, :, 0] == 128
    assert filled[:, :9].all() or filled[:, -9:].all()
    assert filled.sum() == 9 * H  # the rest is the shifted image


def test_rotate_turns_by_30_degrees_about_the_centre():
    # Odd sizes: the centre is a pixel. A point 10 pixels right of it moves
    # on the circle to 30 degrees up or down: (-/+5, 8.66).
    image = bright_pixel(41, 57, 20, 38)
    image[20, 28] = 40
    moves = set()
    for k in range(6):
        out = op("Rotate", image, 10.0, (k, 0))
        assert out[20, 28, 0] == 40
        assert out[0, 0, 0] == 128 and out[-1, -1, 0] == 128  # corners filled
        dy, dx = np.subtract(peak(out), (20, 28))
        assert abs(dy) == 5 and dx == 9
        moves.add(int(dy))
    assert moves == {-5, 5}


def test_rand_augment_applies_one_of_the_ops():
    # One op slot, probability 1, fixed magnitude 0: the result is exactly
    # one op's output at magnitude 0, and different seeds pick different ops.
    image = noise_image()
    candidates = [op(name, image, 0.0) for name in OPS]
    picked = set()
    for k in range(12):
        out = augment.rand_augment(
            image, seed(k), num_ops=1, magnitude=0.0, magnitude_std=0.0, prob=1.0
        ).numpy()
        picked.add(next(i for i, c in enumerate(candidates) if np.array_equal(out, c)))
    assert len(picked) >= 3


def test_rand_augment_probability_zero_is_identity():
    image = noise_image() + 0.25  # not even rounded
    out = augment.rand_augment(image, seed(0), prob=0.0)
    np.testing.assert_array_equal(out.numpy(), image)


def test_rand_augment_in_tf_function():
    spec = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)]
    fn = tf.function(lambda x, s: augment.rand_augment(x, s, prob=1.0), spec)
    for k in range(4):
        out = fn(noise_image(), seed(k)).numpy()
        assert out.shape == (H, W, 3) and out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(out, augment.rand_augment(noise_image(), seed(k), prob=1.0))


def test_per_example_pipeline_in_tf_data_is_reproducible():
    # The intended use: a seed per example from (base seed, index); two passes agree.
    def train_map(index, image):
        s = tf.random.experimental.stateless_fold_in(tf.constant([7, 0], tf.int64), index)
        s_crop, s_flip, s_aug, s_erase = tf.unstack(
            tf.random.experimental.stateless_split(s, num=4)
        )
        x = augment.random_resized_crop(image, 32, s_crop)
        x = augment.rand_augment(augment.random_flip(x, s_flip), s_aug)
        return augment.random_erasing((x - 127.5) / 64.0, s_erase, probability=0.5)

    images = np.stack([noise_image(salt=k).astype("uint8") for k in range(3)])
    data = tf.data.Dataset.from_tensor_slices(images).enumerate().map(train_map).batch(3)
    first, second = (next(iter(data)).numpy() for _ in range(2))
    assert first.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[0], first[1])


# --- random_erasing --------------------------------------------------------------


def test_random_erasing_probability_zero_is_identity():
    image = noise_image() / 255
    for k in range(5):
        out = augment.random_erasing(image, seed(k), probability=0.0)
        np.testing.assert_array_equal(out.numpy(), image)


def test_random_erasing_replaces_one_rectangle_with_noise():
    spec = [tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)]
    erase = tf.function(lambda x, s: augment.random_erasing(x, s, probability=1.0), spec)
    image = np.full((H, W, 3), 7.0, "float32")  # noise never equals 7
    erased_values = []
    for k in range(10):
        out = erase(image, seed(k)).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        changed = (out != image).any(axis=-1)
        rows, cols = np.nonzero(changed)
        assert rows.size > 0
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and (out[changed] != 7).all()  # a full rectangle, every channel
        assert box.shape[0] < H and box.shape[1] < W
        assert 0.015 <= box.size / (H * W) <= 0.4
        erased_values.append(out[changed].ravel())
    values = np.concatenate(erased_values)
    assert abs(values.mean()) < 0.1 and abs(values.std() - 1) < 0.1


def test_random_erasing_without_a_fitting_box_is_identity():
    image = noise_image()
    out = augment.random_erasing(image, seed(0), probability=1.0, area=(1.5, 2.0))
    np.testing.assert_array_equal(out.numpy(), image)


# --- mixup_cutmix and smooth_labels ------------------------------------------------


def mixed(seed_, **kwargs):
    images, targets = batch()
    out_images, out_targets = augment.mixup_cutmix(images, targets, seed_, **kwargs)
    lam = out_targets.numpy()[0, 0]  # the one-hot targets of sample 0 (class 0) and 3
    return images, out_images.numpy(), out_targets.numpy(), lam


def test_mixup_cutmix_targets_sum_to_one():
    images, targets = batch()
    targets = augment.smooth_labels([0, 1, 2, 3], 5)
    for k in range(8):
        out_images, out_targets = augment.mixup_cutmix(images, targets, seed(k))
        assert out_images.shape == images.shape and out_targets.shape == targets.shape
        np.testing.assert_allclose(out_targets.numpy().sum(axis=1), 1.0, atol=1e-6)


def test_mixup_is_a_linear_combination_with_the_reversed_batch():
    lams = []
    for k in range(6):
        x, out, targets, lam = mixed(seed(k), cutmix_alpha=0.0)
        np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-5)
        np.testing.assert_allclose(targets[0, 3], 1 - lam, atol=1e-6)
        lams.append(lam)
    assert 0 < min(lams) and max(lams) < 1 and len(set(lams)) == len(lams)


def test_cutmix_pastes_a_box_of_the_reversed_batch():
    fractions = []
    for k in range(8):
        x, out, targets, lam = mixed(seed(k), mixup_alpha=0.0)
        np.testing.assert_allclose(targets[0, 3], 1 - lam, atol=1e-6)
        from_x = (out == x).all(axis=-1)
        from_rev = (out == x[::-1]).all(axis=-1)
        assert (from_x | from_rev).all()
        np.testing.assert_array_equal(from_rev, from_rev[:1].repeat(4, axis=0))  # one box
        rows, cols = np.nonzero(from_rev[0])
        if rows.size:
            assert from_rev[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        np.testing.assert_allclose(from_rev[0].mean(), 1 - lam, atol=1e-6)
        fractions.append(from_rev[0].mean())
    assert max(fractions) > 0


def test_mixup_cutmix_switches_between_modes():
    modes = set()
    for k in range(12):
        x, out, _, _ = mixed(seed(k))
        is_cutmix = ((out == x) | (out == x[::-1])).all()
        modes.add(bool(is_cutmix))
    assert modes == {True, False}


@pytest.mark.parametrize("kwargs", [{"prob": 0.0}, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}])
def test_mixup_cutmix_off_is_identity(kwargs):
    images, targets = batch()
    out_images, out_targets = augment.mixup_cutmix(images, targets, seed(1), **kwargs)
    np.testing.assert_array_equal(out_images.numpy(), images)
    np.testing.assert_array_equal(out_targets.numpy(), targets.numpy())


def test_mixup_cutmix_in_tf_function():
    spec = [
        tf.TensorSpec([None, None, None, 3], tf.float32),
        tf.TensorSpec([None, 5], tf.float32),
        tf.TensorSpec([2], tf.int64),
    ]
    fn = tf.function(augment.mixup_cutmix, input_signature=spec)
    images, targets = batch()
    for k in range(4):
        graph = fn(images, targets, seed(k))
        eager = augment.mixup_cutmix(images, targets, seed(k))
        tf.nest.map_structure(np.testing.assert_array_equal, graph, eager)


def test_smooth_labels():
    out = augment.smooth_labels(tf.constant([2, 0]), 5, smoothing=0.1).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 5)
    expected = np.full((2, 5), 0.02, "float32")
    expected[0, 2] = expected[1, 0] = 0.92
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(augment.smooth_labels([1], 3, smoothing=0.0).numpy(), [[0, 1, 0]])
