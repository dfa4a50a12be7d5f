"""keras-hub's own conformance harness (``keras_hub.src.tests.test_case``,
shipped in its wheel: what every keras-hub model passes) on
``NextViTBackbone``, ``NextViTImageClassifier`` and the image converter.

The harness's checks all run as keras-hub's models get them: the backbone
test includes the mixed-precision (``mixed_float16``, ``mixed_bfloat16``,
``bfloat16``), quantization (int8, float8) and ``channels_first`` checks;
the harness itself leaves out mixed precision on PyTorch's CPU, quantization
on PyTorch and ``channels_first`` on TensorFlow's CPU, for every model. The
task test feeds ``predict`` and ``fit`` from arrays and from ``tf.data``
pipelines, with the preprocessor inside the task and mapped over the
dataset.

The tests run on the current Keras backend; ``tests/test_backends.py`` runs
this file again under JAX and PyTorch.
"""

import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("grain")  # imported by keras-hub's test_case

import keras  # noqa: E402
from keras_hub.src.tests import test_case  # noqa: E402

from keras_nextvit import presets  # noqa: E402
from keras_nextvit.hub import (  # noqa: E402
    NextViTBackbone,
    NextViTImageClassifier,
    NextViTImageClassifierPreprocessor,
    NextViTImageConverter,
)

SIZE = 64
# depths (1, 1, 5, 1): every kind of block, the smallest Next-ViT
BACKBONE_KWARGS = {"depths": (1, 1, 5, 1), "image_shape": (SIZE, SIZE, 3), "drop_path_rate": 0.0}


def images(batch=2, height=SIZE, width=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype("float32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


class HarnessTestCase(test_case.TestCase):
    # tf.test.TestCase's deprecated ``test_session()`` is no test (and the
    # harness's TestCase is imported through its module, not by name, for
    # pytest to collect it as none either)
    test_session = None

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)
        # the data-format check sets "channels_first" and restores the
        # format only if it passes: a failure must not leak into other tests
        self.addCleanup(keras.config.set_image_data_format, keras.config.image_data_format())


@pytest.mark.slow
class NextViTBackboneHarnessTest(HarnessTestCase):
    def setUp(self):
        super().setUp()
        self.input_data = images() / 255.0

    def test_backbone_basics(self):
        self.run_vision_backbone_test(
            cls=NextViTBackbone,
            init_kwargs=dict(BACKBONE_KWARGS),
            input_data=self.input_data,
            expected_output_shape=(2, SIZE // 32, SIZE // 32, 1024),
            expected_pyramid_output_keys=["P2", "P3", "P4", "P5"],
            expected_pyramid_image_sizes=[(SIZE // s, SIZE // s) for s in (4, 8, 16, 32)],
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=NextViTBackbone, init_kwargs=dict(BACKBONE_KWARGS), input_data=self.input_data
        )

    def test_channels_first_computes_the_same(self):
        """The harness's channels-first check compares shapes only: with the
        same weights, the channels-first backbone's maps (output and
        pyramid) are the channels-last ones transposed."""
        last = NextViTBackbone(**BACKBONE_KWARGS)
        first = NextViTBackbone(
            **dict(BACKBONE_KWARGS, image_shape=(3, SIZE, SIZE)), data_format="channels_first"
        )
        first.set_weights(last.get_weights())
        x = self.input_data
        expected = keras.Model(last.inputs, last.pyramid_outputs)(x)
        got = keras.Model(first.inputs, first.pyramid_outputs)(np.transpose(x, (0, 3, 1, 2)))
        for key in ("P2", "P3", "P4", "P5"):
            np.testing.assert_allclose(
                numpy(got[key]), np.transpose(numpy(expected[key]), (0, 3, 1, 2)), atol=1e-5,
                err_msg=key,
            )
        np.testing.assert_allclose(
            numpy(first(np.transpose(x, (0, 3, 1, 2)))),
            np.transpose(numpy(last(x)), (0, 3, 1, 2)), atol=1e-5,
        )
        self.assertEqual(first.get_config()["data_format"], "channels_first")
        revived = NextViTBackbone.from_config(first.get_config())
        self.assertEqual(revived.input_shape, (None, 3, SIZE, SIZE))


@pytest.mark.slow
class NextViTImageClassifierHarnessTest(HarnessTestCase):
    def setUp(self):
        super().setUp()
        self.images = images()
        self.labels = np.array([0, 1])
        converter = NextViTImageConverter(image_size=SIZE, crop_pct=1.0)
        self.init_kwargs = {
            "backbone": NextViTBackbone(**BACKBONE_KWARGS),
            "num_classes": 2,
            "preprocessor": NextViTImageClassifierPreprocessor(image_converter=converter),
        }

    def test_classifier_basics(self):
        self.run_task_test(
            cls=NextViTImageClassifier,
            init_kwargs=self.init_kwargs,
            train_data=(self.images, self.labels),
            expected_output_shape=(2, 2),
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=NextViTImageClassifier, init_kwargs=self.init_kwargs, input_data=self.images
        )


class NextViTImageConverterHarnessTest(HarnessTestCase):
    def test_preprocessing_layer(self):
        """Direct calls, ``tf.data`` (per image and batched) and Grain give
        the same numbers: the centre crop of images whose shorter side is
        already the crop's (no resize), normalised."""
        x = images(height=SIZE, width=SIZE + 16)
        output = self.run_preprocessing_layer_test(
            cls=NextViTImageConverter,
            init_kwargs={"image_size": SIZE, "crop_pct": 1.0},
            input_data=x,
            return_output=True,
        )
        mean, std = np.array(presets.IMAGENET_MEAN), np.array(presets.IMAGENET_STD)
        expected = (x[:, :, 8 : 8 + SIZE] / 255.0 - mean) / std
        np.testing.assert_allclose(numpy(output), expected, atol=1e-5)

    def test_channels_first(self):
        """A channels-first converter takes and returns (..., 3, H, W)."""
        x = images(height=SIZE + 8, width=SIZE + 16)
        last = NextViTImageConverter(image_size=SIZE, crop_pct=0.875)
        first = NextViTImageConverter(image_size=SIZE, crop_pct=0.875, data_format="channels_first")
        expected = np.transpose(numpy(last(x)), (0, 3, 1, 2))
        np.testing.assert_allclose(numpy(first(np.transpose(x, (0, 3, 1, 2)))), expected, atol=1e-5)
        self.assertEqual(NextViTImageConverter.from_config(first.get_config()).data_format,
                         "channels_first")
        with self.assertRaisesRegex(ValueError, "channels-first RGB"):
            first(x)
