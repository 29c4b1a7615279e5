"""The shared round with stateful clients, composed from parts as TFF computations.

One round, for every algorithm of `fedpara_tff.algorithms` and every
parameterisation (FedPara, pFedPara, FedPer, local only), in TFF's order:

1. distributor: the server broadcasts the global variables (and the algorithm's
   server control when it has clients use it, SCAFFOLD's `c`) and the round's
   client learning rate;
2. client work (`fedpara_tff.client_work.build_client_train`): each client
   trains from them and its own local state, and returns its upload, its new
   local state and its weight;
3. aggregator (`fedpara_tff.aggregators.FactorAggregatorFactory`): the weighted
   mean of the uploads, with the bytes measured;
4. finalizer: the algorithm's server step, skipped when the mean is not finite.

Steps 3-4, with the round's metrics and the new server state, are one federated
computation, `finish_round`, which both backends call: TFF's own round after its
client map, `fedpara_tff.tf_backend` after training the clients on its devices.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregators
from fedpara_tff import client_work
from fedpara_tff import communication
from fedpara_tff import personalized_process
from fedpara_tff import processes
import keras_layers


def _specs(variables):
  return [tf.TensorSpec(v.shape, v.dtype) for v in variables]


def split_variables(keras_model_fn, local_layers):
  """Which trainable variables are global (sent) and which stay local.

  Returns:
    `(global_index, local_index, global_specs, local_specs)`: positions in
    `model.trainable_variables` and the `tf.TensorSpec`s of each group.
  """
  with tf.Graph().as_default():
    model = keras_model_fn()
    processes.check_no_non_trainable(len(model.non_trainable_variables))
    sent = [not local for local in keras_layers.local_variable_mask(model, local_layers)]
    variables = model.trainable_variables
    global_index = [i for i, s in enumerate(sent) if s]
    local_index = [i for i, s in enumerate(sent) if not s]
    return (global_index, local_index, _specs([variables[i] for i in global_index]),
            _specs([variables[i] for i in local_index]))


class StatefulRound:
  """The round's TFF computations for one model and algorithm.

  Args:
    keras_model_fn: no-argument function building the Keras model.
    element_spec: the client datasets' batched element spec (`x`, `y`).
    algorithm: a `fedpara_tff.algorithms` object (FedAvg, Scaffold, FedDyn).
    client_learning_rate, server_learning_rate, lr_decay: the round's rates
      (client rate at round r: `client_learning_rate * lr_decay**r`).
    local_epochs, loss_fn, jacobian_correction, client_optimizer,
      client_momentum: the client work (`client_work.build_client_train`).
    local_layers: layer names kept local entirely (FedPer).
    aggregator, quantization_bits: the inner factory / quantization of the
      factor aggregator.

  Attributes:
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
    init_local: `() -> a new client's local state` (model-local variables, then
      the algorithm's client state).
  """

  def __init__(self, keras_model_fn, element_spec, algorithm, *, client_learning_rate,
               server_learning_rate, local_epochs, local_layers, loss_fn, aggregator, lr_decay,
               quantization_bits, jacobian_correction, client_optimizer, client_momentum):
    (self.global_index, self.local_index, global_specs,
     model_local_specs) = split_variables(keras_model_fn, local_layers)
    self.algorithm, self.keras_model_fn, self.loss_fn = algorithm, keras_model_fn, loss_fn
    self._client_settings = dict(local_epochs=local_epochs,
                                 jacobian_correction=float(jacobian_correction),
                                 client_optimizer=client_optimizer, algorithm=algorithm,
                                 client_momentum=float(client_momentum))
    self.global_specs, self.model_local_specs = global_specs, model_local_specs
    # What clients receive and keep: the model's variables, then the algorithm's
    # server control (if broadcast) and client state (fedpara_tff.algorithms).
    self.received_specs = global_specs + (global_specs if algorithm.broadcast_control else [])
    self.local_specs = model_local_specs + (global_specs if algorithm.client_state else [])
    self.global_type = tff.types.tensorflow_to_type(global_specs)
    self.local_type = tff.types.tensorflow_to_type(self.local_specs)
    self.data_type = tff.SequenceType(tff.types.tensorflow_to_type(element_spec))
    self._build_initial_values()
    self._build_client_computations()
    self._build_schedule(client_learning_rate, lr_decay)
    self._build_finish_round(element_spec, aggregator, quantization_bits, server_learning_rate,
                             local_epochs)
    self._build_federated_round()

  def split(self, model):
    """`(global variables, local variables)` of a model built by `keras_model_fn`."""
    variables = model.trainable_variables
    return [variables[i] for i in self.global_index], [variables[i] for i in self.local_index]

  def client_train(self, model):
    """The client work on `model` (`client_work.build_client_train`, this round's settings)."""
    return client_work.build_client_train(model, self.loss_fn(), self.split,
                                          **self._client_settings)

  def control(self, state):
    """The algorithm's server arrays in `state` (a Python server state), or their zeros."""
    return state['control'] if self.algorithm.server_state else self.init_control()

  def received(self, state):
    """What each client receives this round, from a Python server state."""
    extra = list(self.control(state)) if self.algorithm.broadcast_control else []
    return list(state['global_weights']) + extra

  def _build_initial_values(self):
    algorithm, global_specs = self.algorithm, self.global_specs

    @tff.tensorflow.computation
    def init_global():
      return self.split(self.keras_model_fn())[0]

    @tff.tensorflow.computation
    def init_local():
      globals_, locals_ = self.split(self.keras_model_fn())
      state = [tf.zeros_like(v) for v in globals_] if algorithm.client_state else []
      return locals_ + state

    # The algorithm's server arrays (SCAFFOLD's c, FedDyn's h, the server optimizer's state);
    # zeros of the global variables' shapes, unused, for the algorithms without any.
    control_specs = (algorithm.control_specs(global_specs) if algorithm.server_state
                     else global_specs)
    self.control_type = tff.types.tensorflow_to_type(control_specs)

    @tff.tensorflow.computation
    def init_control():
      if algorithm.server_state:
        return algorithm.initial_control(global_specs)
      return [tf.zeros(s.shape, s.dtype) for s in global_specs]

    self.init_global, self.init_local, self.init_control = init_global, init_local, init_control

  def _build_client_computations(self):
    received_type = tff.types.tensorflow_to_type(self.received_specs)

    @tff.tensorflow.computation(received_type, self.local_type, self.data_type, tf.float32)
    def client_update(received_values, local_values, dataset, learning_rate):
      return self.client_train(self.keras_model_fn())(received_values, local_values, dataset,
                                                      learning_rate)

    n_model_local = len(self.local_index)

    @tff.tensorflow.computation(self.global_type, self.local_type, self.data_type)
    def client_eval(global_values, local_values, dataset):
      evaluate = client_work.build_client_eval(self.keras_model_fn(), self.split, n_model_local)
      return evaluate(global_values, local_values, dataset)

    @tff.tensorflow.computation(self.global_type, self.control_type)
    def with_control(global_values, control):
      return list(global_values) + list(control)

    self.client_update, self.client_eval, self.with_control = (client_update, client_eval,
                                                               with_control)

  def _build_schedule(self, client_learning_rate, lr_decay):
    @tff.tensorflow.computation(tf.int32)
    def learning_rate_at(round_num):
      return client_learning_rate * tf.pow(float(lr_decay), tf.cast(round_num, tf.float32))

    @tff.tensorflow.computation(tf.int32)
    def increment(round_num):
      return round_num + 1

    @tff.tensorflow.computation
    def zero_rounds():
      return tf.constant(0, tf.int32)

    self.learning_rate_at, self.increment, self.zero_rounds = (learning_rate_at, increment,
                                                               zero_rounds)

  def _server_control(self, state):
    """The algorithm's server arrays of a SERVER-placed state, or their zeros."""
    if self.algorithm.server_state:
      return state.control
    return tff.federated_eval(self.init_control, tff.SERVER)

  def _server_state(self, global_weights, aggregator_state, round_num, control):
    # FedAvg / FedProx keep the state they always had; stateful servers add `control`.
    fields = collections.OrderedDict(global_weights=global_weights, aggregator=aggregator_state,
                                     round_num=round_num)
    if self.algorithm.server_state:
      fields['control'] = control
    return tff.federated_zip(fields)

  def _build_finish_round(self, element_spec, aggregator, quantization_bits,
                          server_learning_rate, local_epochs):
    algorithm, global_specs = self.algorithm, self.global_specs
    upload_type = tff.types.tensorflow_to_type(global_specs * algorithm.uploads)
    aggregation = aggregators.FactorAggregatorFactory(
        inner=aggregator, quantization_bits=quantization_bits).create(
        upload_type, tff.TensorType(np.float32))
    self.aggregator_value_type = aggregation.next.type_signature.parameter[1].member
    n_global = len(global_specs)

    @tff.tensorflow.computation(self.global_type, self.control_type, upload_type, tf.float32)
    def server_update(global_values, control, mean_upload, clients):
      # A non-finite mean (e.g. every client diverged: weights sum to 0) is not
      # applied, as TFF's own finalizer skips it.
      mean_upload = list(mean_upload)
      finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in mean_upload])
      new_global, new_control = algorithm.server(
          list(global_values), list(control), mean_upload[:n_global], mean_upload[n_global:],
          clients, server_learning_rate)
      keep = lambda new, old: [tf.where(finite, n, o) for n, o in zip(new, old)]
      return keep(new_global, global_values), keep(new_control or list(control), control)

    # Labels per example: 1 for classification, the sequence length for
    # next-character targets `(batch, length)`.
    outputs_per_example = float(np.prod(element_spec['y'].shape[1:]))
    download_per_client = communication.structure_bytes(self.received_specs)

    @tff.tensorflow.computation(tf.float32, tf.float32, tf.float32, tf.int32, tf.int32)
    def round_metrics(loss_sum, examples, correct, diverged, clients):
      passes = examples * float(local_epochs)
      return collections.OrderedDict(
          loss=tf.math.divide_no_nan(loss_sum, passes),
          accuracy=tf.math.divide_no_nan(correct, passes * outputs_per_example),
          num_examples=examples,
          diverged_clients=diverged,
          bytes_downloaded=tf.cast(clients, tf.int64) * download_per_client)

    @tff.federated_computation
    def initialize():
      return self._server_state(tff.federated_eval(self.init_global, tff.SERVER),
                                aggregation.initialize(),
                                tff.federated_eval(self.zero_rounds, tff.SERVER),
                                tff.federated_eval(self.init_control, tff.SERVER))

    self.initialize = initialize
    state_type = initialize.type_signature.result
    at_clients = lambda t: tff.FederatedType(t, tff.CLIENTS)

    @tff.federated_computation(state_type, at_clients(upload_type), at_clients(np.float32),
                               at_clients(np.float32), at_clients(np.float32),
                               at_clients(np.float32), at_clients(np.int32))
    def finish_round(state, upload, weight, examples, loss_sum, correct, diverged):
      control = self._server_control(state)
      aggregated = aggregation.next(state.aggregator, upload, weight)
      server_out = tff.federated_map(server_update, (state.global_weights, control,
                                                     aggregated.result, tff.federated_sum(weight)))
      metrics = tff.federated_zip(collections.OrderedDict(
          train=tff.federated_map(round_metrics, (
              tff.federated_sum(loss_sum), tff.federated_sum(examples),
              tff.federated_sum(correct), tff.federated_sum(diverged),
              communication.count_clients())),
          aggregator=aggregated.measurements))
      new_state = self._server_state(server_out[0], aggregated.state,
                                     tff.federated_map(self.increment, state.round_num),
                                     server_out[1])
      return new_state, metrics

    self.state_type, self.finish_round = state_type, finish_round

  def _build_federated_round(self):
    algorithm = self.algorithm
    # Each client's position in the round travels with its values: TFF's
    # mergeable (multi-worker) context returns CLIENTS-placed results in the
    # order its sub-rounds finish, not in the order the clients were given.
    positions_type = tff.FederatedType(np.int32, tff.CLIENTS)
    data_at_clients = tff.FederatedType(self.data_type, tff.CLIENTS)
    local_at_clients = tff.FederatedType(self.local_type, tff.CLIENTS)

    @tff.tensorflow.computation(tf.int32)
    def same_position(position):
      return tf.identity(position)

    @tff.federated_computation(self.state_type, data_at_clients, local_at_clients, positions_type)
    def next_fn(state, data, local_values, positions):
      learning_rate = tff.federated_map(self.learning_rate_at, state.round_num)
      received = (tff.federated_map(self.with_control,
                                    (state.global_weights, self._server_control(state)))
                  if algorithm.broadcast_control else state.global_weights)
      upload, new_local, weight, examples, loss_sum, correct, diverged = tff.federated_map(
          self.client_update, (tff.federated_broadcast(received), local_values, data,
                               tff.federated_broadcast(learning_rate)))
      new_state, metrics = self.finish_round(state, upload, weight, examples, loss_sum, correct,
                                             diverged)
      return new_state, new_local, metrics, tff.federated_map(same_position, positions)

    @tff.federated_computation(tff.FederatedType(self.global_type, tff.SERVER), data_at_clients,
                               local_at_clients, positions_type)
    def evaluate_fn(global_values, data, local_values, positions):
      return (tff.federated_map(self.client_eval, (tff.federated_broadcast(global_values),
                                                   local_values, data)),
              tff.federated_map(same_position, positions))

    @tff.tensorflow.computation(self.data_type)
    def no_position(unused_dataset):
      return tf.constant(0, tf.int32)

    @tff.federated_computation(self.state_type, data_at_clients, local_at_clients)
    def template_next(state, data, client_states):
      new_state, new_local, metrics, _ = next_fn(state, data, client_states,
                                                 tff.federated_map(no_position, data))
      return new_state, new_local, metrics

    @tff.tensorflow.computation(self.state_type.member)
    def get_model_weights(state):
      return tff.learning.models.ModelWeights(trainable=list(state['global_weights']),
                                              non_trainable=[])

    self.next, self.evaluate = next_fn, evaluate_fn
    self.template = personalized_process.PersonalizedProcess(
        self.initialize, template_next, get_model_weights, self.init_local)
