"""Learning-rate schedules, per optimizer update (Keras passes the step).

* :class:`WarmupCosineDecay` -- linear warm-up from a rate, then cosine
  decay (the classification recipe, timm's ``cosine`` scheduler per step).
* :class:`PolyDecay` -- mmcv's ``poly`` policy (the segmentation recipes).
* :class:`StepDecay` -- mmcv's ``step`` policy: the rate times ``gamma`` at
  each milestone (the detection recipes' epochs 8 and 11).

:class:`PolyDecay` and :class:`StepDecay` take mmcv's ``linear`` warm-up
(:func:`mmcv_linear_warmup`): a factor from ``warmup_ratio`` to 1 on the
policy's own rate over ``warmup_iters`` updates.
"""

import math

import keras
from keras import ops


def mmcv_linear_warmup(lr, step, warmup_iters, warmup_ratio):
    """``lr`` during mmcv's linear warm-up, unchanged after it.

    mmcv: ``k = (1 - i / warmup_iters) * (1 - warmup_ratio)`` and the rate
    ``lr * (1 - k)``; here ``1 - k`` is computed as ``ratio + (1 - ratio) *
    i / warmup_iters``, the same factor without float32 cancellation when
    ``k`` is close to 1."""
    if warmup_iters <= 0:
        return lr
    factor = warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return ops.where(step < warmup_iters, lr * factor, lr)


def _check_warmup(name, warmup_iters):
    if int(warmup_iters) < 0:
        raise ValueError(f"{name} warmup_iters must be >= 0, got {warmup_iters}.")


@keras.saving.register_keras_serializable(package="keras_nextvit")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_lr`` to ``peak_lr``, then cosine to ``min_lr``.

    Steps are optimizer updates. Keras passes the schedule its micro-step
    counter, which with gradient accumulation advances ``steps_per_update``
    times per update; the schedule divides it back.
    ``schedule="constant"`` holds ``peak_lr`` after the warm-up.
    """

    def __init__(
        self,
        peak_lr,
        total_steps,
        warmup_steps=0,
        warmup_lr=1e-6,
        min_lr=1e-5,
        schedule="cosine",
        steps_per_update=1,
    ):
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}.")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.schedule = schedule
        self.steps_per_update = int(steps_per_update)

    def __call__(self, step):
        step = ops.floor_divide(ops.cast(step, "int32"), self.steps_per_update)
        step = ops.cast(step, "float32")
        warm = self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        if self.schedule == "constant":
            after = ops.convert_to_tensor(self.peak_lr, "float32")
        else:
            progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip(progress, 0.0, 1.0)
            cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
            after = self.min_lr + (self.peak_lr - self.min_lr) * cosine
        return ops.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        return dict(
            peak_lr=self.peak_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            schedule=self.schedule,
            steps_per_update=self.steps_per_update,
        )


@keras.saving.register_keras_serializable(package="keras_nextvit")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmcv's ``poly`` policy per iteration, with optional linear warm-up.

    At iteration ``i`` (the optimizer's update count, from 0)::

        lr(i) = (base_lr - min_lr) * (1 - min(i, max_iters) / max_iters) ** power + min_lr
        if i < warmup_iters:   # mmcv's 'linear' warm-up, applied to the poly rate
            k = (1 - i / warmup_iters) * (1 - warmup_ratio)
            lr(i) = lr(i) * (1 - k)
    """

    def __init__(
        self, base_lr, max_iters, power=0.9, min_lr=0.0, warmup_iters=0, warmup_ratio=1e-6
    ):
        if int(max_iters) < 1:
            raise ValueError(f"PolyDecay max_iters must be >= 1, got {max_iters}.")
        _check_warmup("PolyDecay", warmup_iters)
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / self.max_iters, 1.0)
        lr = (self.base_lr - self.min_lr) * ops.power(1.0 - progress, self.power) + self.min_lr
        return mmcv_linear_warmup(lr, step, self.warmup_iters, self.warmup_ratio)

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            max_iters=self.max_iters,
            power=self.power,
            min_lr=self.min_lr,
            warmup_iters=self.warmup_iters,
            warmup_ratio=self.warmup_ratio,
        )


@keras.saving.register_keras_serializable(package="keras_nextvit")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmcv's ``step`` policy with optional linear warm-up.

    ``milestones`` are optimizer updates (mmdet's ``step=[8, 11]`` epochs
    times the updates per epoch); at update ``i``::

        lr(i) = base_lr * gamma ** (number of milestones <= i)
        if i < warmup_iters:   # mmcv's 'linear' warm-up, applied to that rate
            lr(i) = lr(i) * (warmup_ratio + (1 - warmup_ratio) * i / warmup_iters)

    (mmcv counts epochs for the milestones and iterations for the warm-up;
    an epoch-based runner's rate changes at the first update of epoch 8.)
    """

    def __init__(self, base_lr, milestones, gamma=0.1, warmup_iters=0, warmup_ratio=0.001):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones) or any(m < 1 for m in milestones):
            raise ValueError(f"StepDecay milestones must be increasing positive updates, got {milestones}.")
        _check_warmup("StepDecay", warmup_iters)
        self.base_lr = float(base_lr)
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = sum(ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
        lr = self.base_lr * ops.power(self.gamma, passed)
        return mmcv_linear_warmup(lr, step, self.warmup_iters, self.warmup_ratio)

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            milestones=list(self.milestones),
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_ratio=self.warmup_ratio,
        )
