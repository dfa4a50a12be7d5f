"""AdamW with parameter groups, as upstream's ``paramwise_cfg``.

Keras' optimizers take one rule per variable: decayed or not
(``exclude_from_weight_decay``). The recipes need exactly that:

* classification (timm's ``weight_decay`` groups): no decay on any variable
  of rank <= 1, norms' scales and offsets and every bias (``"rank1"``);
* UperNet and the detectors (mmcv's ``norm_decay_mult=0`` / ``custom_keys
  {"norm": decay_mult 0}``): no decay on the normalisation layers' scales
  and offsets, biases decayed (``"norms"``);
* Semantic FPN: every parameter decayed (``"none"``).

``no_decay_keys`` adds variables whose path contains one of the strings
(mmcv's ``custom_keys`` with ``decay_mult=0``).
"""

import dataclasses

import keras

from ..optimizers import AdamW

NO_DECAY_RULES = ("none", "norms", "rank1")

NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def no_weight_decay_variables(model):
    """Norm scales/offsets and biases: every trainable variable of rank <= 1."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def norm_variables(model):
    """The trainable variables of every normalisation layer (BatchNorm's
    gamma and beta): what upstream's ``paramwise_cfg`` keys ``bn`` and
    ``norm`` match in the Next-ViT backbone and the mmseg/mmdet heads."""
    found = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, NORMALIZATION_LAYERS):
            for variable in layer.trainable_weights:
                found[id(variable)] = variable
    return list(found.values())


def no_decay_variables(model, rule="none", no_decay_keys=()):
    """The trainable variables ``rule`` (one of :data:`NO_DECAY_RULES`) and
    ``no_decay_keys`` spare from weight decay, each once."""
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"no-decay rule must be one of {NO_DECAY_RULES}, got {rule!r}.")
    chosen = {"none": [], "norms": norm_variables, "rank1": no_weight_decay_variables}[rule]
    found = {id(v): v for v in (chosen(model) if callable(chosen) else chosen)}
    for variable in model.trainable_variables:
        if any(key in variable.path for key in no_decay_keys):
            found.setdefault(id(variable), variable)
    return list(found.values())


@dataclasses.dataclass(frozen=True)
class AdamWSettings:
    """AdamW's hyper-parameters as a recipe gives them (mmcv's ``optimizer``
    and ``paramwise_cfg``): ``no_decay`` is one of :data:`NO_DECAY_RULES`."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    epsilon: float = 1e-8
    clip_norm: float = None
    no_decay: str = "norms"

    def build(self, model, learning_rate=None):
        """:func:`adamw` for ``model``; ``learning_rate``: a schedule (default:
        the constant rate)."""
        rate = self.learning_rate if learning_rate is None else learning_rate
        return adamw(model, rate, self.weight_decay, *self.betas, self.epsilon, clip_norm=self.clip_norm,
                     no_decay=self.no_decay)


def adamw(model, learning_rate, weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
          clip_norm=None, no_decay="none", no_decay_keys=(), gradient_accumulation=1,
          ema_momentum=None):
    """:class:`keras_nextvit.AdamW` for ``model``'s parameter groups.

    ``learning_rate``: a number or a schedule (see :mod:`.schedules`).
    ``clip_norm``: global-norm gradient clipping (``None``/0: none).
    ``gradient_accumulation``: steps per update (Keras' own accumulation;
    the schedule then sees micro-steps). ``ema_momentum``: keep an
    exponential moving average of the weights (``None``: no EMA).
    """
    accumulation = int(gradient_accumulation)
    if accumulation < 1:
        raise ValueError(f"gradient_accumulation must be >= 1, got {gradient_accumulation}.")
    optimizer = AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clip_norm or None,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
        use_ema=ema_momentum is not None,
        ema_momentum=ema_momentum or 0.99,
    )
    spared = no_decay_variables(model, no_decay, no_decay_keys)
    if spared:
        optimizer.exclude_from_weight_decay(var_list=spared)
    return optimizer


def build_optimizer_variables(model):
    """Create the compiled optimizer's variables (moments, EMA copies,
    accumulators) now. Left to Keras, TensorFlow creates them inside the first
    trace of the training step, and a ``tf.function`` that creates variables
    is traced a second time: a trace of the training step costs ~4 s for the
    tiny Next-ViT (depths 1, 1, 5, 1) and 33 s for Next-ViT-S on two cores.
    Call it inside the distribution scope the model was built in."""
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return model
