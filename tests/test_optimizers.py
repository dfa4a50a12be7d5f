"""keras_nextvit.AdamW: Keras' AdamW, its step-level scalars made once per step."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_nextvit
from keras_nextvit import training

SHAPES = [(3, 3, 4, 8), (8,), (8,), (16, 10), (10,), (2, 5, 7)]


def _schedule():
    return training.WarmupCosineDecay(peak_lr=1e-2, total_steps=8, warmup_steps=2, warmup_lr=1e-4, min_lr=1e-5)


def _run(optimizer_class, compiled, steps=4, **kwargs):
    """Variables and optimizer state after ``steps`` updates with seeded
    gradients, the project's recipe features on: a schedule, weight decay
    with the rank-1 variables excluded, global-norm clipping, EMA."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}") for i, s in enumerate(SHAPES)]
    optimizer = optimizer_class(
        learning_rate=_schedule(), weight_decay=0.05, global_clipnorm=1.0, use_ema=True,
        ema_momentum=0.9, **kwargs,
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
    optimizer.build(variables)

    def apply(grads):
        optimizer.apply(grads, variables)

    step = tf.function(apply, autograph=False) if compiled else apply
    for _ in range(steps):
        step([tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES])
    return [np.array(v) for v in variables + list(optimizer.variables)]


@contextlib.contextmanager
def graph_optimizer_off():
    """TensorFlow's graph optimizer (grappler) rewrites arithmetic according
    to the graph's shape, so two different graphs of the same maths may round
    differently; without it each operation runs as traced."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": before.get("disable_meta_optimizer", False)}
        )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("accumulation", [None, 2])
def test_bitwise_keras_adamw(compiled, accumulation):
    """Every variable and every optimizer variable (moments, EMA copies,
    accumulators, the step count) equal Keras' AdamW's, bit for bit."""
    with graph_optimizer_off() if compiled else contextlib.nullcontext():
        ours = _run(keras_nextvit.AdamW, compiled, gradient_accumulation_steps=accumulation)
        theirs = _run(keras.optimizers.AdamW, compiled, gradient_accumulation_steps=accumulation)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours[0], np.random.default_rng(0).normal(size=SHAPES[0]).astype("float32"))


def test_amsgrad_is_keras_adamw():
    with graph_optimizer_off():
        ours = _run(keras_nextvit.AdamW, True, amsgrad=True)
        theirs = _run(keras.optimizers.AdamW, True, amsgrad=True)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def _update_operations(optimizer_class):
    """Operations in a traced update of 30 variables under the recipe's schedule."""
    variables = [keras.Variable(np.ones((4, 4), "float32")) for _ in range(30)]
    optimizer = optimizer_class(learning_rate=_schedule(), weight_decay=0.05)
    optimizer.build(variables)
    function = tf.function(lambda grads: optimizer.apply(grads, variables), autograph=False)
    graph = function.get_concrete_function([tf.TensorSpec((4, 4))] * 30).graph
    return len(graph.get_operations())


def test_scalars_made_once_per_step():
    ours, theirs = _update_operations(keras_nextvit.AdamW), _update_operations(keras.optimizers.AdamW)
    # Keras: ~79 operations per variable here (the schedule twice, the step
    # count and the bias corrections); ours ~32: the variable's own
    # arithmetic and reads, the weight decay and the update contexts
    assert ours < 0.5 * theirs, (ours, theirs)
    assert ours < 30 * 35, ours


def test_serialization_and_training_recipe():
    optimizer = keras_nextvit.AdamW(learning_rate=_schedule(), weight_decay=0.05, beta_2=0.99)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is keras_nextvit.AdamW
    assert restored.get_config() == optimizer.get_config()
    assert isinstance(optimizer, keras.optimizers.AdamW)
    model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(32, 32, 3), classes=3)
    recipe = training.get_recipe("paper")
    assert type(training.build_optimizer(recipe, model, 8, 10)) is keras_nextvit.AdamW
