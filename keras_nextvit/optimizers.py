"""AdamW: Keras' AdamW, with its per-step scalars made once per step on TensorFlow.

Keras' TensorFlow optimizer computes, for every variable, the learning rate
(the whole schedule: a warm-up and cosine decay is some twenty operations),
the step count and both bias corrections again, and evaluates the schedule a
second time for every variable it decays. For the tiny Next-ViT (depths 1,
1, 5, 1) with a warm-up and cosine schedule, the traced training step has
18,020 operations with Keras' AdamW and 9,170 with this one, and its first
batch (the trace) takes about half as long (11.7 s -> 5.9 s on a 2-core Intel
Xeon; ``python tools/optimizer_trace.py``).

Here each step's scalars are made once per learning-rate tensor and reused
by every variable; every variable's own arithmetic is Keras' AdamW, operation
for operation, so in eager mode (and in a ``tf.function`` with TensorFlow's
graph optimizer off) the results are bitwise those of
``keras.optimizers.AdamW``. With the graph optimizer on, TensorFlow may fold
a smaller graph differently: the results then agree to float32 rounding.

On JAX (XLA merges the repeated scalars itself) and PyTorch (Keras has a
fused ``torch._foreach`` AdamW there) ``AdamW(...)`` builds Keras' own
optimizer for that backend.

>>> import keras_nextvit
>>> optimizer = keras_nextvit.AdamW(learning_rate=1e-3, weight_decay=0.05)
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_nextvit")
class AdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` (same arguments, same state, same
    checkpoints) whose step-level scalars are made once per step rather than
    once per variable on TensorFlow."""

    def __new__(cls, *args, **kwargs):
        if keras.backend.backend() != "tensorflow":
            # Keras' own (backend-specific) AdamW; not an instance of this
            # class, so Python does not initialise it a second time.
            return keras.optimizers.AdamW(*args, **kwargs)
        return super().__new__(cls)

    # One dict per step's update (None outside it): the learning rate tensor
    # and dtype -> the scalars made for them. Emptied when the update is
    # traced, so that no graph is kept alive by it.
    _scalars = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._scalars = {}
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._scalars = None

    def _step_size(self, learning_rate, dtype):
        """Keras' AdamW step size ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``
        for this step, made once per learning-rate tensor and dtype."""
        key = (id(learning_rate), dtype)
        if self._scalars is not None and key in self._scalars:
            return self._scalars[key][1]
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        if self._scalars is not None:
            # the tensor is kept with its scalars so that its id is not reused
            self._scalars[key] = (learning_rate, alpha)
        return alpha

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        alpha = self._step_size(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
        )

    def _apply_weight_decay(self, variables):
        """Keras' TensorFlow weight decay, ``variable -= variable * wd * lr``
        for the variables not excluded, with the learning rate (the schedule)
        evaluated once rather than once per variable."""
        if self.weight_decay is None:
            return
        import tensorflow as tf

        def apply(distribution, variables):
            learning_rate = self.learning_rate

            def decay(variable):
                if self._use_weight_decay(variable):
                    lr = tf.cast(learning_rate, variable.dtype)
                    wd = tf.cast(self.weight_decay, variable.dtype)
                    variable.assign_sub(variable * wd * lr)

            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value  # the tf.Variable
                distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply, self._distribution_strategy, variables
        )


__all__ = ["AdamW"]
