"""Model adapters: a FedPara / pFedPara Keras model as a `tff.learning` model, and its variables.

`classify_variables` names the role of every variable of a Keras model:

* `factor`: a global FedPara / pFedPara / low-rank factor (travels);
* `local`: a pFedPara local factor, or any variable of a `local_layers` layer
  (stays on the client);
* `global`: another trainable variable (biases, plain layers, norm scales; travels);
* `other`: a non-trainable variable: a frozen layer's or an adapter's frozen kernel and bias
  (kept on every client, never sent: `frozen_variables`), or a trainable layer's statistics
  (BatchNorm), which TFF 0.87 never aggregates; our processes refuse those.
"""

import collections
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

import keras_layers

KINDS = ('factor', 'local', 'global', 'other')


def check_no_non_trainable(count):
  """Refuses models with non-trainable variables on TFF's own builders.

  TFF 0.87's builders never aggregate non-trainable variables (the server would keep BatchNorm
  statistics at their initial values forever; docs/DESIGN.md, "TFF runtime facts") and
  broadcast them every round (an adapter's frozen kernel would travel each round). Frozen
  layers and adapters run on the shared round instead (`frozen_variables`).
  """
  if count:
    raise ValueError(f'the model has {count} non-trainable variable(s), which TFF 0.87\'s '
                     f'builders never aggregate and broadcast every round: for BatchNorm use '
                     f'GroupNormalization or LayerNormalization; frozen layers and adapters run '
                     f'on fedpara_tff.build_fedavg_driver / build_pfedpara_driver, which keep '
                     f'them on the clients (docs/USAGE.md, "Adapters").')


def _layers(model):
  """`model` and every layer inside it (cells and wrapped layers included)."""
  return [model] + [m for m in model.submodules if isinstance(m, tf.keras.layers.Layer)]


def frozen_variables(model: tf.keras.Model) -> list:
  """The shared round's frozen variables of `model`: its non-trainable variables, in
  `model.non_trainable_variables` order, when each belongs to a frozen layer
  (`layer.trainable = False`) or is an adapter's frozen kernel or bias
  (`keras_layers.add_adapters`). The round keeps them at their pretrained values on every
  client and never sends them (docs/DESIGN.md, "Adapters").

  Raises:
    ValueError: a non-trainable variable of a trainable layer (BatchNorm's statistics), which
      training changes and TFF 0.87 would never aggregate; named in one line.
  """
  kept = {v.ref() for layer in _layers(model)
          if not layer.trainable or getattr(layer, 'adapter', False)
          for v in layer.non_trainable_variables}
  others = [v.name for v in model.non_trainable_variables if v.ref() not in kept]
  if others:
    raise ValueError(f'the model has {len(others)} non-trainable variable(s) of trainable '
                     f'layers (first {others[0]!r}: BatchNorm statistics?), which training '
                     f'changes and TFF 0.87 never aggregates: use GroupNormalization or '
                     f'LayerNormalization, or freeze the layer (trainable=False).')
  return list(model.non_trainable_variables)


def classify_variables(keras_model: tf.keras.Model,
                       local_layers: Sequence[str] = ()) -> Dict[str, list]:
  """`OrderedDict(variable name -> kind)` over `keras_model.variables`, in that order."""
  local = {v.ref() for v, is_local in zip(
      keras_model.trainable_variables,
      keras_layers.local_variable_mask(keras_model, local_layers)) if is_local}
  factors = {v.ref() for layer in keras_layers.factorized_layers(keras_model)
             for f in layer.factorizations for v in f.global_variables}
  trainable = {v.ref() for v in keras_model.trainable_variables}
  kinds = collections.OrderedDict()
  for v in keras_model.variables:
    ref = v.ref()
    if ref in local:
      kinds[v.name] = 'local'
    elif ref in factors:
      kinds[v.name] = 'factor'
    elif ref in trainable:
      kinds[v.name] = 'global'
    else:
      kinds[v.name] = 'other'
  return kinds


def check_keras_model_fn(keras_model_fn: Any) -> Any:
  """`keras_model_fn` if it is a function (not a Keras model: a model is callable too, and
  calling it with no input fails deep in Keras); else a TypeError in one line."""
  if isinstance(keras_model_fn, tf.keras.Model) or not callable(keras_model_fn):
    raise TypeError(f'keras_model_fn must be a function returning a new Keras model (TFF '
                    f'builds the model inside its computations); got '
                    f'{type(keras_model_fn).__name__}: pass e.g. `lambda: make_model()`.')
  return keras_model_fn


def keras_model_fn_to_tff(keras_model_fn: Callable[[], tf.keras.Model], input_spec: Any, *,
                          loss_fn: Optional[Callable[[], Any]] = None,
                          metrics_fn: Optional[Callable[[], list]] = None
                          ) -> Callable[[], tff.learning.models.VariableModel]:
  """A `model_fn` for `tff.learning` builders from a function building the Keras model.

  Args:
    keras_model_fn: builds a new Keras model on each call (TFF needs it built
      inside `model_fn`).
    input_spec: the batched element spec of the client datasets (`x`, `y`).
    loss_fn: returns the Keras loss; default sparse categorical
      cross-entropy on logits.
    metrics_fn: returns a list of Keras metrics; default sparse categorical
      accuracy.
  """
  loss_fn = loss_fn or (lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  metrics_fn = metrics_fn or (lambda: [tf.keras.metrics.SparseCategoricalAccuracy()])

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model_fn(), loss=loss_fn(), input_spec=input_spec, metrics=metrics_fn())

  return model_fn
