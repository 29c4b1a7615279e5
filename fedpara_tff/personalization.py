"""pFedPara and FedPer with stateful clients: global factors travel, local ones stay.

pFedPara (ICLR 2022, section 3.3) splits each kernel as `W = W1 * (W2 + 1)`:
the global `W1` factors are averaged by the server, the local `W2` factors never
leave their client and persist on it across rounds. FedPer keeps whole layers
local. Both run on the same machinery here.

A `tff.learning` LearningProcess cannot hold per-client state in TFF 0.87
(client-work state is SERVER-placed), so this follows the TFF way for
simulations with stateful clients. Two entry points per method, named for what
they return:

* `build_pfedpara_process` / `build_fedper_process` / `build_local_only_process`:
  the TFF template, a `fedpara_tff.PersonalizedProcess` (an IterativeProcess whose
  `next` takes the sampled clients' local state as a CLIENTS-placed argument and
  returns their new state, with `get_model_weights`), for users' own loops;
* `build_pfedpara_driver` / `build_fedper_driver` / `build_local_only_driver` /
  `build_fedavg_driver`: the Python driver (`PersonalizedDriver`) that runs the
  same round and keeps each client's local variables between rounds in a
  client-state store, with client ids, personalised evaluation and the
  in-process TensorFlow backend (`fedpara_tff.tf_backend`).

Simulation only: production TFF deployments have stateless clients.

Only the global variables are broadcast and uploaded; the upload goes through
`FactorAggregatorFactory`, so bytes are measured the same way as for FedPara.
"""

import collections
import itertools

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedpara_tff import aggregators
from fedpara_tff import algorithms
from fedpara_tff import client_optimizer as client_optimizer_lib
from fedpara_tff import client_store
import keras_layers
from fedpara_tff import communication
from fedpara_tff import personalized_process
from fedpara_tff import processes


def _specs(variables):
  return [tf.TensorSpec(v.shape, v.dtype) for v in variables]


def check_round_clients(client_ids, datasets):
  """`client_ids` as a list, if they are distinct and one per dataset; else a ValueError."""
  client_ids = list(client_ids)
  if len(set(client_ids)) != len(client_ids) or len(client_ids) != len(datasets):
    raise ValueError(f'client_ids must be distinct and match the datasets; got '
                     f'{client_ids!r} for {len(datasets)} datasets.')
  return client_ids


def correct_and_total(logits, labels):
  """Correct arg-max predictions and the number of labels, as float32 scalars."""
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))
  return correct, tf.cast(tf.size(labels), tf.float32)


def build_client_train(model, loss, split, local_epochs, jacobian_correction=0.0,
                       client_optimizer='sgd', algorithm=None, client_momentum=0.0):
  """The client half of a round, as a `tf.function` over `model` (the one implementation).

  TFF's client computation wraps it (inside `tff.tensorflow.computation`) and
  the in-process TensorFlow backend (`fedpara_tff.tf_backend`) calls it on a
  model placed on a device: same code, same numbers.

  Args:
    model: a Keras model; its variables are overwritten by each call.
    loss: a Keras loss.
    split: function of the model returning `(global variables, local variables)`.
    local_epochs: passes over the dataset.
    jacobian_correction: strength lambda of the paper's Jacobian correction
      (`keras_layers.jacobian`, with the round's client learning rate as
      `eta`); 0 trains on the plain gradients.
    client_optimizer: `'sgd'` or `'adam'` (`fedpara_tff.client_optimizer`; its
      state starts from zero every round).
    client_momentum: SGD momentum of the client steps (0: none).
    algorithm: a `fedpara_tff.algorithms` client piece (FedAvg / FedProx,
      SCAFFOLD, FedDyn): the correction of the global variables' gradients and
      what the client sends and keeps besides (default plain FedAvg).

  Returns:
    `train(global_values, local_values, dataset, learning_rate)` returning
    `(upload, new_local, weight, examples, loss_sum, correct, diverged)`.
    `global_values`: the global variables, then the server's control when the
    algorithm broadcasts one (SCAFFOLD's `c`). `local_values`: the model's
    local variables, then the client's algorithm state when it has one
    (SCAFFOLD's `c_i`, FedDyn's `g_k`, one per global variable). `upload`: the
    FedAvg update (initial minus trained global values), then the algorithm's
    extra values (SCAFFOLD's `c_i+ - c_i`); `new_local` is laid out as
    `local_values`; `weight` is the example count (1 for the unweighted
    algorithms); then the example count, summed loss and correct predictions
    over the local epochs, and 1 if training diverged (then the upload is zero,
    the weight 0 and the local values unchanged, as TFF's client work does).
  """
  global_vars, local_vars = split(model)
  algorithm = algorithm or algorithms.FedAvg()
  optimizer = client_optimizer_lib.LocalOptimizer(client_optimizer, model.trainable_variables,
                                                  client_momentum)
  n_global, n_local = len(global_vars), len(local_vars)

  # Variable assignments inside a TFF computation are only ordered inside a
  # tf.function (docs/DESIGN.md, "TFF runtime facts").
  @tf.function
  def train(global_values, local_values, dataset, learning_rate):
    global_values, local_values = list(global_values), list(local_values)
    x = [tf.convert_to_tensor(v) for v in global_values[:n_global]]
    c_server = global_values[n_global:] or [None] * n_global
    c_client = local_values[n_local:] or [None] * n_global
    for v, value in zip(global_vars + local_vars, x + local_values[:n_local]):
      v.assign(value)
    optimizer.reset()
    index = {v.ref(): i for i, v in enumerate(global_vars)}

    def correct_gradient(v, g):
      i = index.get(v.ref())
      return g if i is None else algorithm.gradient(g, v, x[i], c_server[i], c_client[i])

    def step(totals, batch):
      def objective_fn():
        logits = model(batch['x'], training=True)
        batch_loss = loss(batch['y'], logits)
        # Regularisation terms of the model (e.g. weight decay), as TFF's
        # from_keras_model adds them.
        return (tf.add_n([batch_loss] + model.losses) if model.losses else batch_loss), logits

      objective, logits, grads = keras_layers.jacobian.loss_and_gradients(
          model, objective_fn, model.trainable_variables, learning_rate, jacobian_correction)
      grads = [correct_gradient(v, g) for v, g in zip(model.trainable_variables, grads)]
      optimizer.apply(grads, learning_rate)
      size = tf.cast(tf.shape(batch['y'])[0], tf.float32)
      correct, _ = correct_and_total(logits, batch['y'])
      return (totals[0] + size, totals[1] + objective * size, totals[2] + correct,
              totals[3] + 1)

    # An iterator loop, like TFF's DATASET_ITERATOR (faster here than dataset.reduce).
    totals = (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0), tf.constant(0))
    for batch in iter(dataset.repeat(local_epochs)):
      totals = step(totals, batch)
    seen, loss_sum, correct, steps = totals
    y = [tf.identity(v) for v in global_vars]
    extra, client_state = algorithm.client_finish(x, y, c_server, c_client, steps,
                                                  learning_rate)
    upload = [a - b for a, b in zip(x, y)] + extra
    new_local = [tf.identity(v) for v in local_vars] + client_state
    finite = tf.reduce_all([tf.math.is_finite(loss_sum)] + [
        tf.reduce_all(tf.math.is_finite(t)) for t in upload + new_local])
    examples = seen / float(local_epochs)
    weight = tf.cast(examples > 0, tf.float32) if algorithm.uniform else examples
    return ([tf.where(finite, u, tf.zeros_like(u)) for u in upload],
            [tf.where(finite, n, o) for n, o in zip(new_local, local_values)],
            tf.where(finite, weight, 0.0), tf.where(finite, examples, 0.0),
            tf.where(finite, loss_sum, 0.0), tf.where(finite, correct, 0.0),
            tf.cast(tf.logical_not(finite), tf.int32))

  return train


class PersonalizedDriver:
  """Driver of the stateful-client process; keeps every client's local variables.

  Args:
    keras_model_fn: no-argument function building the Keras model (with
      pFedPara layers, or any layers, FedPara or plain, plus `local_layers`).
    element_spec: the client datasets' batched element spec, an OrderedDict
      with `x` and `y`.
    client_learning_rate: client learning rate (> 0), for global and local
      variables alike.
    server_learning_rate: server SGD learning rate on the mean update (> 0).
    local_epochs: passes over each client's data per round (>= 1).
    local_layers: layer names kept local entirely (FedPer).
    loss_fn: no-argument function returning the Keras loss (default sparse
      categorical cross-entropy on logits).
    aggregator: inner weighted TFF factory for the global updates.
    lr_decay: the client learning rate at round r (from 0) is
      `client_learning_rate * lr_decay**r`; in (0, 1] (the paper's
      personalisation runs use 0.999).
    quantization_bits: quantize the uploaded global updates to this many bits
      (instead of `aggregator`); bytes are counted as sent.
    jacobian_correction: lambda of the Jacobian correction on the factorised
      Dense / convolution layers (>= 0; 0 off).
    client_optimizer: `'sgd'` (default) or `'adam'` (`fedpara_tff.client_optimizer`).
    algorithm: `'fedavg'` (default), `'fedprox'`, `'scaffold'` or `'feddyn'`
      (`fedpara_tff.algorithms`, which gives each one's equations); SCAFFOLD's
      `c_i` and FedDyn's gradient state are kept per client beside its local
      variables (for the global variables only), their server state in the
      server state's `control`.
    proximal_strength: FedProx's mu on the global variables (>= 0; > 0 with
      `'fedavg'` means FedProx).
    feddyn_alpha: FedDyn's alpha (> 0).
    num_clients: all clients, N (SCAFFOLD and FedDyn).
    server_optimizer: `'sgd'` (default), `'adam'`, `'yogi'` or `'adagrad'` for
      FedAvg / FedProx: FedAdam, FedYogi, FedAdagrad (`fedpara_tff.algorithms.ServerOptimizer`).
    server_momentum: server SGD momentum (FedAvg / FedProx).
    client_momentum: client SGD momentum (0: none; its accumulator starts at
      zero every round, as TFF's client work does).
    require_local: refuse a model without local variables (True for the
      pFedPara / FedPer entry points; `build_fedavg_driver` sets it False).
  """

  def __init__(self, keras_model_fn, element_spec, client_learning_rate=0.1,
               server_learning_rate=1.0, local_epochs=1, local_layers=(), loss_fn=None,
               aggregator=None, lr_decay=1.0, quantization_bits=None, require_local=True,
               jacobian_correction=0.0, client_optimizer='sgd', algorithm='fedavg',
               proximal_strength=0.0, feddyn_alpha=0.1, num_clients=None,
               server_optimizer='sgd', server_momentum=0.0, client_momentum=0.0):
    processes.check_positive(client_learning_rate, 'client_learning_rate')
    processes.check_positive(server_learning_rate, 'server_learning_rate')
    if not isinstance(lr_decay, (int, float)) or not 0 < lr_decay <= 1:
      raise ValueError(f'lr_decay must be a number in (0, 1]; got {lr_decay!r}.')
    processes.check_finite_at_least_zero(jacobian_correction, 'jacobian_correction')
    client_optimizer_lib.check(client_optimizer)
    algorithm = algorithms.build(algorithm, proximal_strength, feddyn_alpha, num_clients,
                                 server_optimizer, server_momentum)
    if (not isinstance(client_momentum, (int, float)) or isinstance(client_momentum, bool)
        or not 0 <= client_momentum < 1):
      raise ValueError(f'client_momentum must be a number in [0, 1); got {client_momentum!r}.')
    if client_momentum and (client_optimizer != 'sgd' or jacobian_correction):
      raise ValueError(f'client_momentum={client_momentum} applies to plain SGD steps; got '
                       f'client_optimizer={client_optimizer!r}, jacobian_correction='
                       f'{jacobian_correction}.')
    if algorithm.client_state and client_optimizer != 'sgd':
      raise ValueError(f'algorithm={algorithm.name} corrects SGD steps; got client_optimizer='
                       f'{client_optimizer!r}.')
    if client_optimizer != 'sgd' and jacobian_correction:
      raise ValueError(f'jacobian_correction={jacobian_correction} assumes an SGD client step; '
                       f'got client_optimizer={client_optimizer!r}.')
    if not isinstance(local_epochs, int) or local_epochs < 1:
      raise ValueError(f'local_epochs must be an integer >= 1; got {local_epochs!r}.')
    loss_fn = loss_fn or (lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with tf.Graph().as_default():
      model = keras_model_fn()
      processes.check_no_non_trainable(len(model.non_trainable_variables))
      sent = [not local for local in keras_layers.local_variable_mask(model, local_layers)]
      variables = model.trainable_variables
      global_specs = _specs([v for v, s in zip(variables, sent) if s])
      local_specs = _specs([v for v, s in zip(variables, sent) if not s])
    if algorithm.name != 'fedavg' and not global_specs:
      raise ValueError(f'algorithm={algorithm.name} acts on the global variables; this model has '
                       f'none (every variable is local).')
    if require_local and not local_specs:
      raise ValueError('the model has no local variable: use pFedPara layers or local_layers.')
    self.global_index = [i for i, s in enumerate(sent) if s]
    self.local_index = [i for i, s in enumerate(sent) if not s]
    self.algorithm = algorithm
    self.global_type = tff.types.tensorflow_to_type(global_specs)
    # What clients receive and keep: the model's variables, then the algorithm's
    # server control (if broadcast) and client state (fedpara_tff.algorithms).
    received_specs = global_specs + (global_specs if algorithm.broadcast_control else [])
    local_specs = local_specs + (global_specs if algorithm.client_state else [])
    self.received_type = tff.types.tensorflow_to_type(received_specs)
    self.local_type = tff.types.tensorflow_to_type(local_specs)
    n_model_local = len(self.local_index)
    data_type = tff.SequenceType(tff.types.tensorflow_to_type(element_spec))
    # Labels per example: 1 for classification, the sequence length for
    # next-character targets `(batch, length)`.
    outputs_per_example = float(np.prod(element_spec['y'].shape[1:]))
    g_index, l_index = self.global_index, self.local_index

    def split(model):
      tv = model.trainable_variables
      return [tv[i] for i in g_index], [tv[i] for i in l_index]

    @tff.tensorflow.computation
    def init_global():
      return split(keras_model_fn())[0]

    @tff.tensorflow.computation
    def init_local():
      globals_, locals_ = split(keras_model_fn())
      state = [tf.zeros_like(v) for v in globals_] if algorithm.client_state else []
      return locals_ + state

    # The algorithm's server arrays (SCAFFOLD's c, FedDyn's h, the server optimizer's state);
    # zeros of the global variables' shapes, unused, for the algorithms without any.
    control_specs = (algorithm.control_specs(global_specs) if algorithm.server_state
                     else global_specs)
    control_type = tff.types.tensorflow_to_type(control_specs)

    @tff.tensorflow.computation
    def init_control():
      if algorithm.server_state:
        return algorithm.initial_control(global_specs)
      return [tf.zeros(s.shape, s.dtype) for s in global_specs]

    self.keras_model_fn, self.loss_fn, self.local_epochs = keras_model_fn, loss_fn, local_epochs
    self.jacobian_correction = float(jacobian_correction)
    self.client_momentum = float(client_momentum)
    self.client_optimizer = client_optimizer
    self.split = split

    @tff.tensorflow.computation(self.received_type, self.local_type, data_type, tf.float32)
    def client_update(global_values, local_values, dataset, learning_rate):
      train = build_client_train(keras_model_fn(), loss_fn(), split, local_epochs,
                                 float(jacobian_correction), client_optimizer, algorithm,
                                 float(client_momentum))
      return train(global_values, local_values, dataset, learning_rate)

    @tff.tensorflow.computation(self.global_type, self.local_type, data_type)
    def client_eval(global_values, local_values, dataset):
      model = keras_model_fn()
      global_vars, local_vars = split(model)

      @tf.function
      def evaluate(global_values, local_values, dataset):
        local_values = list(local_values)[:n_model_local]   # without the algorithm's state
        for v, value in zip(global_vars + local_vars, list(global_values) + local_values):
          v.assign(value)

        def step(totals, batch):
          correct, total = correct_and_total(model(batch['x'], training=False), batch['y'])
          return totals[0] + correct, totals[1] + total

        correct, total = dataset.reduce((tf.constant(0.0), tf.constant(0.0)), step)
        return collections.OrderedDict(accuracy=tf.math.divide_no_nan(correct, total),
                                       num_examples=total)

      return evaluate(global_values, local_values, dataset)

    upload_type = tff.types.tensorflow_to_type(global_specs * algorithm.uploads)
    aggregation = aggregators.FactorAggregatorFactory(
        inner=aggregator, quantization_bits=quantization_bits).create(
        upload_type, tff.TensorType(np.float32))
    self.aggregator_value_type = aggregation.next.type_signature.parameter[1].member
    download_per_client = communication.structure_bytes(received_specs)
    n_global = len(global_specs)

    @tff.tensorflow.computation(self.global_type, control_type, upload_type, tf.float32)
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

    @tff.tensorflow.computation(self.global_type, control_type)
    def with_control(global_values, control):
      return list(global_values) + list(control)

    @tff.tensorflow.computation(tf.int32)
    def learning_rate_at(round_num):
      return client_learning_rate * tf.pow(float(lr_decay), tf.cast(round_num, tf.float32))

    @tff.tensorflow.computation(tf.int32)
    def increment(round_num):
      return round_num + 1

    @tff.tensorflow.computation
    def zero_rounds():
      return tf.constant(0, tf.int32)

    @tff.tensorflow.computation(tf.float32, tf.float32, tf.float32, tf.int32, tf.int32)
    def round_metrics(loss_sum, examples, correct, diverged, clients):
      passes = examples * float(local_epochs)
      return collections.OrderedDict(
          loss=tf.math.divide_no_nan(loss_sum, passes),
          accuracy=tf.math.divide_no_nan(correct, passes * outputs_per_example),
          num_examples=examples,
          diverged_clients=diverged,
          bytes_downloaded=tf.cast(clients, tf.int64) * download_per_client)

    def server_state(global_weights, aggregator_state, round_num, control):
      # FedAvg / FedProx keep the state they always had; SCAFFOLD and FedDyn add `control`.
      fields = collections.OrderedDict(global_weights=global_weights,
                                       aggregator=aggregator_state, round_num=round_num)
      if algorithm.server_state:
        fields['control'] = control
      return tff.federated_zip(fields)

    @tff.federated_computation
    def initialize():
      return server_state(tff.federated_eval(init_global, tff.SERVER), aggregation.initialize(),
                          tff.federated_eval(zero_rounds, tff.SERVER),
                          tff.federated_eval(init_control, tff.SERVER))

    state_type = initialize.type_signature.result

    # Each client's position in the round travels with its values: TFF's
    # mergeable (multi-worker) context returns CLIENTS-placed results in the
    # order its sub-rounds finish, not in the order the clients were given.
    positions_type = tff.FederatedType(np.int32, tff.CLIENTS)

    @tff.tensorflow.computation(tf.int32)
    def same_position(position):
      return tf.identity(position)

    @tff.federated_computation(state_type, tff.FederatedType(data_type, tff.CLIENTS),
                               tff.FederatedType(self.local_type, tff.CLIENTS), positions_type)
    def next_fn(state, data, local_values, positions):
      learning_rate = tff.federated_map(learning_rate_at, state.round_num)
      control = (state.control if algorithm.server_state
                 else tff.federated_eval(init_control, tff.SERVER))
      received = (tff.federated_map(with_control, (state.global_weights, control))
                  if algorithm.broadcast_control else state.global_weights)
      upload, new_local, weight, examples, loss_sum, correct, diverged = tff.federated_map(
          client_update, (tff.federated_broadcast(received), local_values, data,
                          tff.federated_broadcast(learning_rate)))
      aggregated = aggregation.next(state.aggregator, upload, weight)
      server_out = tff.federated_map(server_update, (state.global_weights, control,
                                                     aggregated.result, tff.federated_sum(weight)))
      clients = communication.count_clients()
      metrics = tff.federated_zip(collections.OrderedDict(
          train=tff.federated_map(round_metrics, (
              tff.federated_sum(loss_sum), tff.federated_sum(examples),
              tff.federated_sum(correct), tff.federated_sum(diverged), clients)),
          aggregator=aggregated.measurements))
      new_state = server_state(server_out[0], aggregated.state,
                               tff.federated_map(increment, state.round_num), server_out[1])
      return new_state, new_local, metrics, tff.federated_map(same_position, positions)

    @tff.federated_computation(tff.FederatedType(self.global_type, tff.SERVER),
                               tff.FederatedType(data_type, tff.CLIENTS),
                               tff.FederatedType(self.local_type, tff.CLIENTS), positions_type)
    def evaluate_fn(global_values, data, local_values, positions):
      return (tff.federated_map(client_eval, (tff.federated_broadcast(global_values),
                                              local_values, data)),
              tff.federated_map(same_position, positions))

    @tff.tensorflow.computation(data_type)
    def no_position(unused_dataset):
      return tf.constant(0, tf.int32)

    @tff.federated_computation(state_type, tff.FederatedType(data_type, tff.CLIENTS),
                               tff.FederatedType(self.local_type, tff.CLIENTS))
    def template_next(state, data, client_states):
      new_state, new_local, metrics, _ = next_fn(state, data, client_states,
                                                 tff.federated_map(no_position, data))
      return new_state, new_local, metrics

    @tff.tensorflow.computation(state_type.member)
    def get_model_weights(state):
      return tff.learning.models.ModelWeights(trainable=list(state['global_weights']),
                                              non_trainable=[])

    self.process = tff.templates.IterativeProcess(initialize, next_fn)
    self.iterative_process = personalized_process.PersonalizedProcess(
        initialize, template_next, get_model_weights, init_local)
    # The round's pieces, for the in-process TensorFlow backend (fedpara_tff.tf_backend).
    self.aggregation, self.server_update, self.init_control = (aggregation, server_update,
                                                               init_control)
    self.learning_rate_at, self.increment, self.round_metrics = (
        learning_rate_at, increment, round_metrics)
    self._evaluate = evaluate_fn
    self._initial_local = [np.asarray(a) for a in init_local()]
    self.local_store = client_store.MemoryClientStore()
    self.local_layout = [(tuple(spec.shape), spec.dtype.as_numpy_dtype) for spec in local_specs]

  def initialize(self, initial_weights=None):
    """The server state: `OrderedDict(global_weights=[...], aggregator=..., round_num=0)`.

    Args:
      initial_weights: optional list of all trainable values of the Keras
        model (`model.trainable_variables` order), e.g. from a seeded model
        built eagerly; the global ones start the server state and the local
        ones become every client's initial local variables. Default: TFF's
        own (unseeded) initialisation.
    """
    state = self.process.initialize()
    if initial_weights is None:
      return state
    values = [np.asarray(v) for v in initial_weights]
    expected = len(self.global_index) + len(self.local_index)
    if len(values) != expected:
      raise ValueError(f'initial_weights has {len(values)} arrays; the model has {expected} '
                       f'trainable variables.')
    state['global_weights'] = [values[i] for i in self.global_index]
    algorithm_state = ([np.zeros_like(values[i]) for i in self.global_index]
                       if self.algorithm.client_state else [])
    self._initial_local = [values[i] for i in self.local_index] + algorithm_state
    return state

  def use_store(self, store):
    """Keeps the clients' local variables in `store` (`fedpara_tff.client_store`) from now on."""
    self.local_store = store

  def store_local(self, client_id, values):
    """Keeps a client's new local variables (nothing to keep when no variable is local)."""
    self.store_locals([client_id], [values])

  def store_locals(self, client_ids, values):
    """Keeps the new local variables of several clients (one write to the store)."""
    if self.local_layout:   # model-local variables or the algorithm's client state
      self.local_store.put(client_ids, [[np.asarray(v) for v in value] for value in values])

  def local_state(self, client_id):
    """The client's local variables: stored ones, or the initial ones if never sampled."""
    return self.local_states([client_id])[0]

  def local_states(self, client_ids):
    """`local_state` of each of `client_ids` (one read from the store)."""
    if not self.local_layout:
      return [self._initial_local for _ in client_ids]
    return [self._initial_local if value is None else value
            for value in self.local_store.get(client_ids)]

  def next(self, state, client_ids, datasets):
    """One round on the sampled clients; stores their new local variables.

    Returns:
      `(state, metrics)`; metrics hold `train` (loss, accuracy and num_examples
      over the clients whose training stayed finite, diverged_clients,
      bytes_downloaded) and `aggregator` (the factor aggregator's measurements).
    """
    client_ids = check_round_clients(client_ids, datasets)
    state, new_local, metrics, positions = self.process.next(
        state, list(datasets), self.local_states(client_ids), list(range(len(client_ids))))
    self.store_locals([client_ids[int(p)] for p in positions], list(new_local))
    return state, metrics

  def evaluate(self, state, client_ids, datasets, chunk_clients=100):
    """Personalised accuracy of each client on its own data, with its local variables.

    The clients go to TFF `chunk_clients` at a time (one call with every client's
    data can pass protobuf's 2 GB limit); `datasets` may be any iterable, read
    chunk by chunk.
    """
    client_ids, datasets = list(client_ids), iter(datasets)
    ordered = []
    for start in range(0, len(client_ids), chunk_clients):
      ids = client_ids[start:start + chunk_clients]
      results, positions = self._evaluate(state['global_weights'],
                                          list(itertools.islice(datasets, len(ids))),
                                          self.local_states(ids), list(range(len(ids))))
      chunk = [None] * len(ids)
      for position, result in zip(positions, results):
        chunk[int(position)] = collections.OrderedDict((k, float(v)) for k, v in result.items())
      ordered.extend(chunk)
    return ordered


def build_pfedpara_driver(keras_model_fn, element_spec, **kwargs):
  """A `PersonalizedDriver` for a pFedPara model (local `*2_local` factors)."""
  return PersonalizedDriver(keras_model_fn, element_spec, **kwargs)


def build_fedavg_driver(keras_model_fn, element_spec, **kwargs):
  """FedAvg with server SGD on the stateful-client machinery: every variable travels.

  The same client update, aggregation and server step as pFedPara, so that the
  TFF and the in-process TensorFlow backends (`fedpara_tff.tf_backend`) run one
  implementation. For FedProx, adaptive servers, MIME-lite or momentum use
  `build_fedpara_process` (TFF's own builders).
  """
  return PersonalizedDriver(keras_model_fn, element_spec, require_local=False, **kwargs)


def build_local_only_driver(keras_model_fn, element_spec, **kwargs):
  """A `PersonalizedDriver` where every variable is local: clients never communicate.

  The local-only baseline of the personalisation experiments, on the same
  client update, data and epochs as pFedPara and FedPer; 0 bytes travel.
  """
  with tf.Graph().as_default():
    names = [layer.name for layer in keras_model_fn().layers if layer.trainable_weights]
  return PersonalizedDriver(keras_model_fn, element_spec, local_layers=names, **kwargs)


def build_fedper_driver(keras_model_fn, element_spec, local_layers, **kwargs):
  """A `PersonalizedDriver` keeping `local_layers` on the clients (FedPer baseline)."""
  if not local_layers:
    raise ValueError('FedPer needs at least one local layer name in local_layers.')
  return PersonalizedDriver(keras_model_fn, element_spec, local_layers=local_layers, **kwargs)


def build_pfedpara_process(keras_model_fn, element_spec, **kwargs):
  """pFedPara as a TFF template (`PersonalizedProcess`); arguments as `PersonalizedDriver`'s."""
  return build_pfedpara_driver(keras_model_fn, element_spec, **kwargs).iterative_process


def build_fedper_process(keras_model_fn, element_spec, local_layers, **kwargs):
  """FedPer as a TFF template (`PersonalizedProcess`); arguments as `build_fedper_driver`'s."""
  return build_fedper_driver(keras_model_fn, element_spec, local_layers, **kwargs).iterative_process


def build_local_only_process(keras_model_fn, element_spec, **kwargs):
  """Local-only training as a TFF template (`PersonalizedProcess`), as `build_local_only_driver`."""
  return build_local_only_driver(keras_model_fn, element_spec, **kwargs).iterative_process
