"""A broadcast that reports the bytes it sends (the download half of docs/DESIGN.md, "Communication accounting")."""

import collections
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import communication


def build_measured_broadcast(model_weights_type: Any) -> tff.learning.templates.DistributionProcess:
  """`tff.learning.templates.DistributionProcess` broadcasting `ModelWeights`.

  The same broadcast as TFF's default distributor, plus measurements
  `bytes_downloaded` (clients x bytes of every trainable and non-trainable
  tensor, float32 = 4 bytes an element) and `bytes_downloaded_per_client`.

  Args:
    model_weights_type: `tff.learning.models.weights_type_from_model(model_fn)`.
  """
  specs = tf.nest.flatten(tff.types.type_to_tf_tensor_specs(model_weights_type))

  @tff.tensorflow.computation(tf.int32)
  def figures(clients):
    return collections.OrderedDict(
        bytes_downloaded=communication.broadcast_bytes(clients, specs),
        bytes_downloaded_per_client=communication.broadcast_bytes(1, specs))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(model_weights_type, tff.SERVER))
  def next_fn(state, weights):
    clients = communication.count_clients()
    return tff.templates.MeasuredProcessOutput(
        state=state, result=tff.federated_broadcast(weights),
        measurements=tff.federated_map(figures, clients))

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)
