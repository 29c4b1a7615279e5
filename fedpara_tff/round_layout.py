"""The round's layout: which values the round moves, as positions, specs and TFF types.

`build_layout` splits a model's trainable variables into the global ones (sent) and the local
ones (kept by the client; `fedpara_tff.aggregators.travel_mask` decides), adds what the
algorithm broadcasts and keeps, and finds the factorised kernels made of global factors
(`fedpara_tff.aggregation_error.kernel_maps`); `ModelParts` is a model of the round with its
split and its client work. `fedpara_tff.stateful_round` builds the round's computations from them.
"""

import dataclasses
from typing import Any, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregation_error
from fedpara_tff import aggregators
from fedpara_tff import client_work
from fedpara_tff import models


def _specs(variables):
  return [tf.TensorSpec(v.shape, v.dtype) for v in variables]


@dataclasses.dataclass(frozen=True)
class VariableSplit:
  """Which trainable variables are global (sent) and which stay local, of one model.

  Attributes:
    global_index, local_index: positions in `model.trainable_variables`.
    global_specs, local_specs: their `tf.TensorSpec`s.
    kernels: the `fedpara_tff.aggregation_error.KernelMap`s of the factorised kernels with
      global factors.
    frozen: how many frozen variables the model has (`fedpara_tff.models.frozen_variables`).
  """
  global_index: List[int]
  local_index: List[int]
  global_specs: List[Any]
  local_specs: List[Any]
  kernels: List[Any]
  frozen: int


def split_variables(keras_model_fn, local_layers) -> VariableSplit:
  """Which trainable variables are global (sent) and which stay local
  (`fedpara_tff.aggregators.travel_mask` decides), from a model built in a graph."""
  with tf.Graph().as_default():
    model = keras_model_fn()
    frozen = len(models.frozen_variables(model))
    sent = aggregators.travel_mask(model, local_layers, require_factorized=False)
    variables = model.trainable_variables
    global_index = [i for i, s in enumerate(sent) if s]
    local_index = [i for i, s in enumerate(sent) if not s]
    return VariableSplit(global_index, local_index,
                         _specs([variables[i] for i in global_index]),
                         _specs([variables[i] for i in local_index]),
                         aggregation_error.kernel_maps(model, global_index), frozen)


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """The values of one eager build of a model with frozen variables (a pretrained model, with
  adapters or frozen layers): the round keeps `frozen` on every client and starts from the
  others. A graph traced by TFF holds no values, so the round sets these there.

  Attributes:
    frozen: the values of `fedpara_tff.models.frozen_variables(model)`, in order.
    global_values, local_values: the initial values of the global and the model-local
      variables (a pretrained head, the adapters' initial factors).
  """
  frozen: List[np.ndarray]
  global_values: List[np.ndarray]
  local_values: List[np.ndarray]


def pretrained_values(keras_model_fn, split: VariableSplit):
  """`Pretrained` values of one eager build of `keras_model_fn`, or None when the model has no
  frozen variables (its initial values are then those every build gives)."""
  if not split.frozen:
    return None
  with tf.init_scope():   # eagerly, even when called while a graph is traced
    model = keras_model_fn()
    variables = [v.numpy() for v in model.trainable_variables]
    return Pretrained([v.numpy() for v in models.frozen_variables(model)],
                      [variables[i] for i in split.global_index],
                      [variables[i] for i in split.local_index])


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the round's values are: the model's global and local variables, what clients receive
  and keep, as positions, `tf.TensorSpec`s and TFF types.

  Attributes:
    global_index, local_index: positions in `model.trainable_variables` of the global (sent)
      and the model-local variables.
    global_specs, model_local_specs: their specs.
    received_specs: what each client receives: the global variables, then the algorithm's
      server control when it broadcasts it (SCAFFOLD's `c`, MIME-lite's momentum).
    local_specs: what each client keeps: its model-local variables, then the algorithm's
      client state (SCAFFOLD's `c_i`, FedDyn's gradient state).
    control_specs: the algorithm's server arrays (zeros of the global shapes, unused, for
      the algorithms without any).
    global_type, local_type, received_type, control_type, data_type: the TFF types.
    kernels: the factorised kernels made of global factors
      (`fedpara_tff.aggregation_error.KernelMap`), whose aggregation error the round measures.
    pretrained: the `Pretrained` values of a model with frozen variables, else None.
  """
  global_index: List[int]
  local_index: List[int]
  global_specs: List[Any]
  model_local_specs: List[Any]
  received_specs: List[Any]
  local_specs: List[Any]
  control_specs: List[Any]
  global_type: Any
  local_type: Any
  received_type: Any
  control_type: Any
  data_type: Any
  kernels: List[Any]
  pretrained: Optional[Pretrained]


def build_layout(keras_model_fn, element_spec, algorithm, local_layers):
  """The `Layout` of a model and algorithm."""
  split = split_variables(keras_model_fn, local_layers)
  global_specs = split.global_specs
  received = global_specs + (global_specs if algorithm.broadcast_control else [])
  local = split.local_specs + (global_specs if algorithm.client_state else [])
  control = (algorithm.control_specs(global_specs) if algorithm.server_state
             else global_specs)
  to_type = tff.types.tensorflow_to_type
  return Layout(split.global_index, split.local_index, global_specs, split.local_specs,
                received, local, control, to_type(global_specs), to_type(local),
                to_type(received), to_type(control), tff.SequenceType(to_type(element_spec)),
                split.kernels, pretrained_values(keras_model_fn, split))


class ModelParts:
  """A model built by `keras_model_fn`, split the round's way, and its client work.

  Args:
    keras_model_fn: no-argument function building the Keras model.
    layout: the round's `Layout`.
    settings: the round's `fedpara_tff.settings.RoundSettings`.
    algorithm: its `fedpara_tff.algorithms` object.
    loss_fn: no-argument function returning the Keras loss.
  """

  def __init__(self, keras_model_fn, layout, settings, algorithm, loss_fn):
    self.keras_model_fn, self.layout = keras_model_fn, layout
    self.settings, self.algorithm, self.loss_fn = settings, algorithm, loss_fn

  def split(self, model):
    """`(global variables, local variables)` of a model built by `keras_model_fn`."""
    variables = model.trainable_variables
    return ([variables[i] for i in self.layout.global_index],
            [variables[i] for i in self.layout.local_index])

  def frozen(self, model):
    """`(variable, value)` of each frozen variable of a model built by `keras_model_fn`, the
    value its pretrained one (`Pretrained`); [] for a model without any."""
    pretrained = self.layout.pretrained
    if pretrained is None:
      return []
    return list(zip(models.frozen_variables(model), pretrained.frozen))

  def client_train(self, model):
    """The client work on `model` (`client_work.build_client_train`, the round's settings)."""
    settings = self.settings
    return client_work.build_client_train(
        model, self.loss_fn(), self.split, local_epochs=settings.local_epochs,
        jacobian_correction=settings.jacobian_correction,
        client_optimizer=settings.client_optimizer, algorithm=self.algorithm,
        client_momentum=settings.local_momentum, frozen=self.frozen(model))

  def client_eval(self, model):
    """The personalised evaluation on `model` (`client_work.build_client_eval`)."""
    return client_work.build_client_eval(model, self.split, len(self.layout.local_index),
                                         frozen=self.frozen(model))
