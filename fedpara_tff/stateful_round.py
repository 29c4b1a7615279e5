"""The shared round with stateful clients, composed from named parts as TFF computations.

One round, for every algorithm of `fedpara_tff.algorithms` and every
parameterisation (FedPara, pFedPara, FedPer, local only), composed in TFF's order
(as `tff.learning.templates.compose_learning_process` composes its own), each part
built by one function below:

1. distributor (`build_distributor`): the server broadcasts the global variables
   (and the algorithm's server control when clients use it, SCAFFOLD's `c`) and
   the round's client learning rate (`build_schedule`);
2. client work (`ClientWork`, over `fedpara_tff.client_work.build_client_train`):
   each client trains from them and its own local state, and returns its upload,
   its new local state and its weight;
3. aggregator (`build_aggregator`, `fedpara_tff.aggregators.FactorAggregatorFactory`):
   the weighted mean of the uploads, with the bytes measured;
4. finalizer (`build_finalizer`): the algorithm's server step, skipped when the mean
   is not finite.

Steps 3-4, with the round's metrics and the new server state, are one federated
computation, `finish_round` (`build_finish_round`), which every client executor calls
(`fedpara_tff.client_executors`): TFF's own round after its client map, the device
executor after training the clients itself.
"""

import collections
import functools
from typing import Any, Callable, List, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregators
from fedpara_tff import algorithms
from fedpara_tff import communication
from fedpara_tff import personalized_process
from fedpara_tff import round_layout
from fedpara_tff import server_half
from fedpara_tff import server_kernels
from fedpara_tff import settings as settings_lib


InitialValues = collections.namedtuple('InitialValues', 'init_global init_local init_control')
Schedule = collections.namedtuple('Schedule', 'learning_rate_at increment zero_rounds')
ModelParts = round_layout.ModelParts


def build_initial_values(parts: ModelParts) -> 'InitialValues':
  """`InitialValues`: TFF computations of the server's global variables, a new client's local
  state and the algorithm's server arrays (`fedpara_tff.server_half`'s initial values)."""

  @tff.tensorflow.computation
  def init_global():
    return server_half.initial_global(parts)

  @tff.tensorflow.computation
  def init_local():
    return server_half.initial_local(parts)

  @tff.tensorflow.computation
  def init_control():
    return server_half.initial_control(parts)

  return InitialValues(init_global, init_local, init_control)


def build_schedule(settings: settings_lib.RoundSettings) -> 'Schedule':
  """`Schedule`: the client learning rate of a round (`RoundSettings.learning_rate_at`) and the
  round counter's step and start."""

  @tff.tensorflow.computation(tf.int32)
  def learning_rate_at(round_num):
    return settings.learning_rate_at(round_num)

  @tff.tensorflow.computation(tf.int32)
  def increment(round_num):
    return round_num + 1

  @tff.tensorflow.computation
  def zero_rounds():
    return tf.constant(0, tf.int32)

  return Schedule(learning_rate_at, increment, zero_rounds)


def server_control(algorithm: algorithms.Algorithm, initial: InitialValues,
                   state: tff.Value) -> tff.Value:
  """The algorithm's server arrays of a SERVER-placed state, or their zeros."""
  if algorithm.server_state:
    return state.control
  return tff.federated_eval(initial.init_control, tff.SERVER)


def build_distributor(parts: ModelParts,
                      initial: InitialValues) -> Callable[[tff.Value], tff.Value]:
  """`distribute(state) -> received at CLIENTS`: the global variables, with the algorithm's
  server control when it broadcasts it."""
  layout, algorithm = parts.layout, parts.algorithm

  @tff.tensorflow.computation(layout.global_type, layout.control_type)
  def with_control(global_values, control):
    return list(global_values) + list(control)

  def distribute(state):
    received = (tff.federated_map(with_control, (state.global_weights,
                                                 server_control(algorithm, initial, state)))
                if algorithm.broadcast_control else state.global_weights)
    return tff.federated_broadcast(received)

  return distribute


class ClientWork:
  """A client's training round and its personalised evaluation, as TFF computations
  (`fedpara_tff.client_work`), each traced when first used: a client executor that trains the
  clients itself (`fedpara_tff.tf_backend`) never needs `client_update`, the costliest trace of
  the round.

  Args:
    parts: the round's `ModelParts`.
  """

  def __init__(self, parts: ModelParts) -> None:
    self._parts = parts

  @functools.cached_property
  def client_update(self) -> tff.Computation:
    """`(received, local values, dataset, learning rate) -> (upload, new local values, weight,
    examples, loss sum, correct, diverged)`."""
    parts, layout = self._parts, self._parts.layout

    @tff.tensorflow.computation(layout.received_type, layout.local_type, layout.data_type,
                                tf.float32)
    def client_update(received_values, local_values, dataset, learning_rate):
      # A plain tuple: TFF's round takes the fields by position (`build_next`).
      return tuple(parts.client_train(parts.keras_model_fn())(received_values, local_values,
                                                              dataset, learning_rate))

    return client_update

  @functools.cached_property
  def client_eval(self) -> tff.Computation:
    """`(global values, local values, dataset) -> OrderedDict(accuracy, num_examples)`."""
    parts, layout = self._parts, self._parts.layout

    @tff.tensorflow.computation(layout.global_type, layout.local_type, layout.data_type)
    def client_eval(global_values, local_values, dataset):
      return parts.client_eval(parts.keras_model_fn())(global_values, local_values, dataset)

    return client_eval


def upload_type(parts: ModelParts) -> tff.Type:
  """The TFF type of one client's upload: its update (and the algorithm's extra arrays)."""
  return tff.types.tensorflow_to_type(parts.layout.global_specs * parts.algorithm.uploads)


def build_aggregator(parts: ModelParts, inner: Any) -> tff.templates.AggregationProcess:
  """The factor aggregator's process for the uploads (weighted mean, bytes measured)."""
  return aggregators.FactorAggregatorFactory(
      inner=inner, quantization_bits=parts.settings.quantization_bits).create(
          upload_type(parts), tff.TensorType(np.float32))


def build_finalizer(parts: ModelParts) -> tff.Computation:
  """`server_update(global values, control, mean upload, clients) -> (global, control)`: the
  algorithm's server step (`fedpara_tff.server_half.server_step`), not applied when the mean
  is not finite, as TFF's own finalizer skips it."""
  layout = parts.layout

  @tff.tensorflow.computation(layout.global_type, layout.control_type, upload_type(parts),
                              tf.float32)
  def server_update(global_values, control, mean_upload, clients):
    return server_half.server_step(parts, global_values, control, mean_upload, clients)

  return server_update


def build_round_metrics(parts: ModelParts, element_spec: Any) -> tff.Computation:
  """`round_metrics(loss sum, examples, correct, diverged, clients)`: the round's `train`
  metrics (`fedpara_tff.server_half.train_metrics`)."""
  labels_per_example = server_half.outputs_per_example(element_spec)

  @tff.tensorflow.computation(tf.float32, tf.float32, tf.float32, tf.int32, tf.int32)
  def round_metrics(loss_sum, examples, correct, diverged, clients):
    return server_half.train_metrics(parts, labels_per_example, loss_sum, examples, correct,
                                     diverged, clients)

  return round_metrics


def _server_state(algorithm: algorithms.Algorithm, global_weights: tff.Value,
                  aggregator_state: tff.Value, round_num: tff.Value,
                  control: tff.Value) -> tff.Value:
  # FedAvg / FedProx keep the state they always had; stateful servers add `control`.
  fields = collections.OrderedDict(global_weights=global_weights, aggregator=aggregator_state,
                                   round_num=round_num)
  if algorithm.server_state:
    fields['control'] = control
  return tff.federated_zip(fields)


def build_initialize(parts: ModelParts, initial: InitialValues,
                     schedule: Schedule,
                     aggregation: tff.templates.AggregationProcess) -> tff.Computation:
  """`initialize() -> server state` at SERVER."""

  @tff.federated_computation
  def initialize():
    return _server_state(parts.algorithm, tff.federated_eval(initial.init_global, tff.SERVER),
                         aggregation.initialize(),
                         tff.federated_eval(schedule.zero_rounds, tff.SERVER),
                         tff.federated_eval(initial.init_control, tff.SERVER))

  return initialize


def build_finish_round(parts: ModelParts, initial: InitialValues,
                       schedule: Schedule,
                       aggregation: tff.templates.AggregationProcess,
                       server_update: tff.Computation, round_metrics: tff.Computation,
                       state_type: tff.Type) -> tff.Computation:
  """`finish_round(state, uploads, weights, examples, loss sums, correct, diverged) ->
  (state, metrics)`: steps 3-4 with the metrics and the new server state, the clients' results
  CLIENTS-placed."""
  algorithm = parts.algorithm
  at_clients = lambda t: tff.FederatedType(t, tff.CLIENTS)
  kernels = server_kernels.build_kernel_means(parts, upload_type(parts))
  refits = kernels is not None and kernels.refit is not None

  @tff.federated_computation(state_type, at_clients(upload_type(parts)), at_clients(np.float32),
                             at_clients(np.float32), at_clients(np.float32),
                             at_clients(np.float32), at_clients(np.int32))
  def finish_round(state, upload, weight, examples, loss_sum, correct, diverged):
    control = server_control(algorithm, initial, state)
    aggregated = aggregation.next(state.aggregator, upload, weight)
    mean_upload = aggregated.result
    if kernels is not None:
      mean_kernels = kernels.mean(state.global_weights, upload, weight)
      if refits:
        mean_upload = tff.federated_map(kernels.refit, (mean_kernels, state.global_weights,
                                                        mean_upload))
    server_out = tff.federated_map(server_update, (state.global_weights, control,
                                                   mean_upload, tff.federated_sum(weight)))
    fields = collections.OrderedDict(
        train=tff.federated_map(round_metrics, (
            tff.federated_sum(loss_sum), tff.federated_sum(examples),
            tff.federated_sum(correct), tff.federated_sum(diverged),
            communication.count_clients())),
        aggregator=aggregated.measurements)
    if kernels is not None:
      fields['aggregation_error'] = tff.federated_map(kernels.error, (
          mean_kernels, state.global_weights, mean_upload))
    metrics = tff.federated_zip(fields)
    new_state = _server_state(algorithm, server_out[0], aggregated.state,
                              tff.federated_map(schedule.increment, state.round_num),
                              server_out[1])
    return new_state, metrics

  return finish_round


def _same_position() -> tff.Computation:
  """A client's position in the round, passed through (see `build_next`)."""

  @tff.tensorflow.computation(tf.int32)
  def same_position(position):
    return tf.identity(position)

  return same_position


def build_next(parts: ModelParts, distribute: Callable[[tff.Value], tff.Value],
               schedule: Schedule, client: 'ClientWork',
               finish_round: tff.Computation, state_type: tff.Type) -> tff.Computation:
  """`next(state, data, local values, positions) -> (state, new local values, metrics,
  positions)`: the whole round. Each client's position travels with its values: TFF's
  mergeable (multi-worker) context returns CLIENTS-placed results in the order its sub-rounds
  finish, not in the order the clients were given."""
  layout, same_position = parts.layout, _same_position()

  @tff.federated_computation(state_type, tff.FederatedType(layout.data_type, tff.CLIENTS),
                             tff.FederatedType(layout.local_type, tff.CLIENTS),
                             tff.FederatedType(np.int32, tff.CLIENTS))
  def next_fn(state, data, local_values, positions):
    learning_rate = tff.federated_map(schedule.learning_rate_at, state.round_num)
    upload, new_local, weight, examples, loss_sum, correct, diverged = tff.federated_map(
        client.client_update, (distribute(state), local_values, data,
                               tff.federated_broadcast(learning_rate)))
    new_state, metrics = finish_round(state, upload, weight, examples, loss_sum, correct,
                                      diverged)
    return new_state, new_local, metrics, tff.federated_map(same_position, positions)

  return next_fn


def build_evaluate(parts: ModelParts, client: 'ClientWork') -> tff.Computation:
  """`evaluate(global values, data, local values, positions) -> (per-client
  OrderedDict(accuracy, num_examples), positions)`."""
  layout, same_position = parts.layout, _same_position()

  @tff.federated_computation(tff.FederatedType(layout.global_type, tff.SERVER),
                             tff.FederatedType(layout.data_type, tff.CLIENTS),
                             tff.FederatedType(layout.local_type, tff.CLIENTS),
                             tff.FederatedType(np.int32, tff.CLIENTS))
  def evaluate_fn(global_values, data, local_values, positions):
    return (tff.federated_map(client.client_eval, (tff.federated_broadcast(global_values),
                                                   local_values, data)),
            tff.federated_map(same_position, positions))

  return evaluate_fn


def build_template(parts: ModelParts, initialize: tff.Computation, next_fn: tff.Computation,
                   initial: InitialValues,
                   state_type: tff.Type) -> personalized_process.PersonalizedProcess:
  """The round as a `fedpara_tff.PersonalizedProcess` (the TFF template for users' loops)."""
  layout = parts.layout

  @tff.tensorflow.computation(layout.data_type)
  def no_position(unused_dataset):
    return tf.constant(0, tf.int32)

  @tff.federated_computation(state_type, tff.FederatedType(layout.data_type, tff.CLIENTS),
                             tff.FederatedType(layout.local_type, tff.CLIENTS))
  def template_next(state, data, client_states):
    new_state, new_local, metrics, _ = next_fn(state, data, client_states,
                                               tff.federated_map(no_position, data))
    return personalized_process.PersonalizedOutput(new_state, new_local, metrics)

  @tff.tensorflow.computation(state_type.member)
  def get_model_weights(state):
    return tff.learning.models.ModelWeights(trainable=list(state['global_weights']),
                                            non_trainable=[])

  return personalized_process.PersonalizedProcess(initialize, template_next, get_model_weights,
                                                  initial.init_local)


class _Computations(NamedTuple):
  """The round's TFF computations, traced together on first use (`StatefulRound`)."""
  initial: Any
  schedule: Any
  distribute: Any
  client: Any
  initialize: Any
  state_type: Any
  finish_round: Any


class StatefulRound:
  """The round's TFF computations for one model and algorithm, composed from the parts above.

  Args:
    keras_model_fn: no-argument function building the Keras model.
    element_spec: the client datasets' batched element spec (`x`, `y`).
    settings: the round's `fedpara_tff.settings.RoundSettings` (rates and their schedule, the
      client work, the algorithm, quantization).
    local_layers: layer names kept local entirely (FedPer).
    loss_fn: no-argument function returning the Keras loss.
    aggregator: the inner factory of the factor aggregator.

  Attributes:
    settings, algorithm, layout, parts: what the round was built from
      (`fedpara_tff.round_layout.Layout`, `ModelParts`); keras_model_fn, element_spec, inner_aggregator (the `aggregator`
      argument): as given.
    aggregator_value_type: the TFF type of what the factor aggregator averages.

  The TFF computations below are traced on first use, all but `next`, `evaluate` and
  `template` together (`trace`): a client executor that runs the round's server half in its
  own process (`fedpara_tff.in_process_round`) never needs them. An executor that does must
  trace them before it builds eager Keras models: a Keras 2 model built in a TFF graph makes
  earlier eager models unusable (docs/DESIGN.md, "TFF runtime facts").

    initialize: `() -> server state` at SERVER: `global_weights`, `aggregator`,
      `round_num`, and `control` when the algorithm keeps server state.
    next: `(state, data, local_values, positions) -> (state, new local values,
      metrics, positions)`; the CLIENTS-placed positions come back in the
      order of the results (a multi-worker context reorders clients).
    finish_round: `(state, uploads, weights, examples, loss_sums, correct,
      diverged) -> (state, metrics)`, the clients' results CLIENTS-placed.
    evaluate: `(global values, data, local values, positions) -> (per-client
      OrderedDict(accuracy, num_examples), positions)`.
    template: the same round as a `fedpara_tff.PersonalizedProcess`.
    init_local: `() -> a new client's local state`; `init_control`: the algorithm's initial
      server arrays; `learning_rate_at`: `(round) -> client learning rate`.
  """

  def __init__(self, keras_model_fn: Callable[[], tf.keras.Model], element_spec: Any,
               settings: settings_lib.RoundSettings, *, local_layers: Sequence[str],
               loss_fn: Callable[[], Any], aggregator: Any) -> None:
    if settings.aggregation == 'kernel_mean' and aggregator is not None:
      raise ValueError(f"aggregation='kernel_mean' needs each client's factors at the "
                       f'aggregator; the inner aggregator {type(aggregator).__name__} '
                       f'aggregates them itself (use one or the other).')
    algorithm = algorithms.build(settings)
    layout = round_layout.build_layout(keras_model_fn, element_spec, algorithm, local_layers)
    self.settings, self.algorithm, self.layout = settings, algorithm, layout
    self.parts = round_layout.ModelParts(keras_model_fn, layout, settings, algorithm, loss_fn)
    self.keras_model_fn, self.element_spec, self.inner_aggregator = (keras_model_fn,
                                                                     element_spec, aggregator)
    self._aggregation = build_aggregator(self.parts, aggregator)
    self.aggregator_value_type = self._aggregation.next.type_signature.parameter[1].member

  @functools.cached_property
  def trace(self) -> _Computations:
    """The round's computations but `next`, `evaluate` and `template`, traced now."""
    parts, aggregation = self.parts, self._aggregation
    initial = build_initial_values(parts)
    schedule = build_schedule(self.settings)
    initialize = build_initialize(parts, initial, schedule, aggregation)
    state_type = initialize.type_signature.result
    finish_round = build_finish_round(parts, initial, schedule, aggregation,
                                      build_finalizer(parts),
                                      build_round_metrics(parts, self.element_spec), state_type)
    return _Computations(initial, schedule, build_distributor(parts, initial),
                         ClientWork(parts), initialize, state_type, finish_round)

  @property
  def initialize(self) -> tff.Computation:
    return self.trace.initialize

  @property
  def finish_round(self) -> tff.Computation:
    return self.trace.finish_round

  @property
  def init_local(self) -> tff.Computation:
    return self.trace.initial.init_local

  @property
  def init_control(self) -> tff.Computation:
    return self.trace.initial.init_control

  @property
  def learning_rate_at(self) -> tff.Computation:
    return self.trace.schedule.learning_rate_at

  @functools.cached_property
  def next(self) -> tff.Computation:
    trace = self.trace
    return build_next(self.parts, trace.distribute, trace.schedule, trace.client,
                      trace.finish_round, trace.state_type)

  @functools.cached_property
  def evaluate(self) -> tff.Computation:
    return build_evaluate(self.parts, self.trace.client)

  @functools.cached_property
  def template(self) -> personalized_process.PersonalizedProcess:
    return build_template(self.parts, self.initialize, self.next, self.trace.initial,
                          self.trace.state_type)

  def client_train(self, model: tf.keras.Model) -> Callable[..., Any]:
    """The client work on `model` (`ModelParts.client_train`)."""
    return self.parts.client_train(model)

  def received(self, state: Mapping[str, Any]) -> List[Any]:
    """What each client receives this round, from a Python server state."""
    return server_half.received(self.algorithm, state, self.init_control)
