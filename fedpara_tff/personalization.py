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
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from fedpara_tff import client_executors
from fedpara_tff import client_store
from fedpara_tff import models
from fedpara_tff.personalized_process import PersonalizedProcess
from fedpara_tff import round_inputs
from fedpara_tff import runtime
from fedpara_tff import settings as settings_lib
from fedpara_tff import stateful_round


# The builders' shared arguments (see `PersonalizedDriver`); `**settings_fields` are forwarded
# whole to `RoundSettings`.
KerasModelFn = Callable[[], Any]   # returns a new tf.keras.Model


class PersonalizedDriver:
  """Driver of the stateful-client process; keeps every client's local variables.

  Args:
    keras_model_fn: no-argument function building the Keras model (with
      pFedPara layers, or any layers, FedPara or plain, plus `local_layers`).
    element_spec: the client datasets' batched element spec, an OrderedDict
      with `x` and `y` (integer class indices with the default loss).
    settings: the round's `fedpara_tff.settings.RoundSettings` (client and server rates,
      their schedule, local epochs, client optimizer and momentum, the algorithm and its
      constants, the Jacobian correction, quantization); or give its fields as keyword
      arguments instead (`client_learning_rate=0.05, algorithm='scaffold', ...`). SCAFFOLD's
      `c_i` and FedDyn's gradient state are kept per client beside its local variables (for the
      global variables only), the server's arrays (SCAFFOLD's `c`, FedDyn's `h`, MIME-lite's
      momentum) in the server state's `control`; the learning rate, local epochs and client
      optimizer apply to global and local variables alike.
    local_layers: layer names kept local entirely (FedPer).
    loss_fn: no-argument function returning the Keras loss (default sparse
      categorical cross-entropy on logits).
    aggregator: inner weighted TFF factory for the global updates (not with
      `quantization_bits`).
    require_local: refuse a model without local variables (True for the
      pFedPara / FedPer entry points; `build_fedavg_driver` sets it False).
    client_executor: what trains the sampled clients, as a factory `round -> executor`
      (`fedpara_tff.client_executors`): `TFFClients` (default; the installed TFF context, TFF's
      local worker after `fedpara_tff.runtime.install()`),
      `fedpara_tff.distributed.RemoteWorkers(addresses)` (remote TFF workers) or
      `fedpara_tff.tf_backend.on_devices(devices)` (this process's GPUs or CPU, with no TFF
      worker at all); the initial state and the evaluation run where it does. For an executor
      on TFF's installed local context, while that is TFF's own native one, the driver first
      installs `fedpara_tff.runtime` (`runtime.install_unless_chosen`), so that no TFF worker
      listens beyond this process.

  Each round's inputs are checked first (`fedpara_tff.round_inputs`): datasets of the element
  spec, the server state of this model, labels inside the model's classes, at least one client
  with data; each mismatch is one `ValueError` / `TypeError` line.
  """

  def __init__(self, keras_model_fn: KerasModelFn, element_spec: Any,
               settings: Optional[settings_lib.RoundSettings] = None, *,
               local_layers: Sequence[str] = (), loss_fn: Optional[Callable[[], Any]] = None,
               aggregator: Optional[Any] = None, require_local: bool = True,
               client_executor: Optional[Callable[[Any], Any]] = None, **settings_fields: Any):
    models.check_keras_model_fn(keras_model_fn)
    self.element_spec = round_inputs.check_element_spec(element_spec,
                                                        integer_labels=loss_fn is None)
    round_inputs.check_model_input(keras_model_fn, element_spec)
    if settings is None:
      settings = settings_lib.RoundSettings(**settings_fields)
    elif settings_fields:
      raise ValueError(f'give either settings or its fields, not both; got settings and '
                       f'{sorted(settings_fields)}.')
    self.settings = settings
    self.round = stateful_round.StatefulRound(
        keras_model_fn, element_spec, settings, local_layers=local_layers,
        loss_fn=loss_fn or (lambda: tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)),
        aggregator=aggregator)
    algorithm, layout = self.round.algorithm, self.round.layout
    if algorithm.name != 'fedavg' and not layout.global_specs:
      raise ValueError(f'algorithm={algorithm.name} acts on the global variables; this model has '
                       f'none (every variable is local).')
    if require_local and not layout.model_local_specs:
      raise ValueError('the model has no local variable: use pFedPara layers or local_layers.')
    self.algorithm = algorithm
    self.global_index, self.local_index = layout.global_index, layout.local_index
    self.global_type, self.local_type = layout.global_type, layout.local_type
    self.aggregator_value_type = self.round.aggregator_value_type
    self.client_executor = (client_executor or client_executors.TFFClients)(self.round)
    if getattr(self.client_executor, 'uses_local_runtime', True):
      runtime.install_unless_chosen()   # before the first TFF computation
    self._initial_local = [np.asarray(a) for a in self.client_executor.init_local()]
    self.local_store = client_store.MemoryClientStore()
    self.local_layout = [(tuple(spec.shape), spec.dtype.as_numpy_dtype)
                         for spec in layout.local_specs]

  @property
  def iterative_process(self):
    """The round as a TFF template (`fedpara_tff.PersonalizedProcess`), built on first use."""
    return self.round.template

  def initialize(self, initial_weights=None):
    """The server state: `OrderedDict(global_weights=[...], aggregator=..., round_num=0)`.

    Args:
      initial_weights: optional list of all trainable values of the Keras
        model (`model.trainable_variables` order), e.g. from a seeded model
        built eagerly; the global ones start the server state and the local
        ones become every client's initial local variables. Default: TFF's
        own (unseeded) initialisation.
    """
    state = self.client_executor.initialize()
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
    """One round on the sampled clients (trained by the client executor); stores their new
    local variables.

    Returns:
      `(state, metrics)`; metrics hold `train` (loss, accuracy and num_examples
      over the clients whose training stayed finite, diverged_clients,
      bytes_downloaded) and `aggregator` (the factor aggregator's measurements). When every
      client diverged, loss and accuracy are NaN and the server model is unchanged.

    Raises:
      ValueError / TypeError: bad round inputs (`fedpara_tff.round_inputs`): no client, ids
        not matching the datasets, a dataset not of the element spec, another model's state,
        a label outside the model's classes, every client dataset empty. Nothing is stored.
    """
    datasets = list(datasets)   # any iterable, as `evaluate` takes
    client_ids = round_inputs.check_round_clients(client_ids, datasets)
    round_inputs.check_state(state, self.round.layout.global_specs)
    round_inputs.check_datasets(client_ids, datasets, self.element_spec)
    try:
      state, new_local, metrics = self.client_executor.train(
          state, client_ids, datasets, self.local_states(client_ids))
    except Exception as error:  # pylint: disable=broad-except  # re-raised unless a bad label
      refusal = round_inputs.label_error(error, client_ids, datasets)
      if refusal is None:
        raise
      raise refusal from None
    round_inputs.check_trained(client_ids, metrics)
    self.store_locals(client_ids, new_local)
    return state, metrics

  def evaluate(self, state, client_ids, datasets, chunk_clients=100):
    """Personalised accuracy of each client on its own data, with its local variables.

    The clients go to TFF `chunk_clients` at a time (one call with every client's
    data can pass protobuf's 2 GB limit); `datasets` may be any iterable, read
    chunk by chunk.

    Returns:
      One `OrderedDict(accuracy, num_examples)` per client, in order; a client whose dataset is
      empty has no accuracy: NaN, with `num_examples` 0.

    Raises:
      ValueError: every client's dataset is empty (as `next` refuses such a round).
    """
    client_ids, datasets = list(client_ids), iter(datasets)
    round_inputs.check_state(state, self.round.layout.global_specs)
    ordered = []
    for start in range(0, len(client_ids), chunk_clients):
      ids = client_ids[start:start + chunk_clients]
      chunk = list(itertools.islice(datasets, len(ids)))
      round_inputs.check_datasets(ids, chunk, self.element_spec)
      results = self.client_executor.evaluate(state['global_weights'], chunk,
                                              self.local_states(ids))
      ordered.extend(collections.OrderedDict((k, float(v)) for k, v in result.items())
                     for result in results)
    for result in ordered:
      if result['num_examples'] == 0:
        result['accuracy'] = math.nan
    if ordered and all(result['num_examples'] == 0 for result in ordered):
      shown = ', '.join(repr(c) for c in client_ids[:5])
      more = f' and {len(client_ids) - 5} more' if len(client_ids) > 5 else ''
      raise ValueError(f'every client dataset given to evaluate is empty (clients {shown}{more}): '
                       f'there is no accuracy to measure; give each client at least one batch.')
    return ordered


def build_pfedpara_driver(keras_model_fn: KerasModelFn, element_spec: Any,
                          settings: Optional[settings_lib.RoundSettings] = None, *,
                          loss_fn: Optional[Callable[[], Any]] = None,
                          aggregator: Optional[Any] = None,
                          client_executor: Optional[Callable[[Any], Any]] = None,
                          **settings_fields: Any) -> 'PersonalizedDriver':
  """A `PersonalizedDriver` for a pFedPara model (local `*2_local` factors).

  Args: as `PersonalizedDriver`; `settings_fields` are `RoundSettings` fields
  (`client_learning_rate=0.05, algorithm='scaffold', ...`), given instead of `settings`.
  """
  return PersonalizedDriver(keras_model_fn, element_spec, settings, loss_fn=loss_fn,
                            aggregator=aggregator, client_executor=client_executor,
                            **settings_fields)


def build_fedavg_driver(keras_model_fn: KerasModelFn, element_spec: Any,
                        settings: Optional[settings_lib.RoundSettings] = None, *,
                        loss_fn: Optional[Callable[[], Any]] = None,
                        aggregator: Optional[Any] = None,
                        client_executor: Optional[Callable[[Any], Any]] = None,
                        **settings_fields: Any) -> 'PersonalizedDriver':
  """FedAvg (or another algorithm) on the stateful-client machinery: every variable travels.

  The same client update, aggregation and server step as pFedPara, so that the
  TFF and the in-process TensorFlow backends (`fedpara_tff.tf_backend`) run one
  implementation; the `RoundSettings` fields `algorithm`, `server_optimizer` and the momentum
  arguments select FedProx, SCAFFOLD, FedDyn, MIME-lite, FedAdam / FedYogi / FedAdagrad
  and momentum on it. Args: as `build_pfedpara_driver`.
  """
  return PersonalizedDriver(keras_model_fn, element_spec, settings, loss_fn=loss_fn,
                            aggregator=aggregator, require_local=False,
                            client_executor=client_executor, **settings_fields)


def build_local_only_driver(keras_model_fn: KerasModelFn, element_spec: Any,
                            settings: Optional[settings_lib.RoundSettings] = None, *,
                            loss_fn: Optional[Callable[[], Any]] = None,
                            client_executor: Optional[Callable[[Any], Any]] = None,
                            **settings_fields: Any) -> 'PersonalizedDriver':
  """A `PersonalizedDriver` where every variable is local: clients never communicate.

  The local-only baseline of the personalisation experiments, on the same
  client update, data and epochs as pFedPara and FedPer; 0 bytes travel. Args: as
  `build_pfedpara_driver`.
  """
  with tf.Graph().as_default():
    names = [layer.name for layer in keras_model_fn().layers if layer.trainable_weights]
  return PersonalizedDriver(keras_model_fn, element_spec, settings, local_layers=names,
                            loss_fn=loss_fn, client_executor=client_executor,
                            **settings_fields)


def build_fedper_driver(keras_model_fn: KerasModelFn, element_spec: Any,
                        local_layers: Sequence[str],
                        settings: Optional[settings_lib.RoundSettings] = None, *,
                        loss_fn: Optional[Callable[[], Any]] = None,
                        aggregator: Optional[Any] = None,
                        client_executor: Optional[Callable[[Any], Any]] = None,
                        **settings_fields: Any) -> 'PersonalizedDriver':
  """A `PersonalizedDriver` keeping `local_layers` (layer names) on the clients (FedPer
  baseline). Args: as `build_pfedpara_driver`."""
  if not local_layers:
    raise ValueError('FedPer needs at least one local layer name in local_layers.')
  return PersonalizedDriver(keras_model_fn, element_spec, settings, local_layers=local_layers,
                            loss_fn=loss_fn, aggregator=aggregator,
                            client_executor=client_executor, **settings_fields)


def build_pfedpara_process(keras_model_fn: KerasModelFn, element_spec: Any,
                           settings: Optional[settings_lib.RoundSettings] = None, *,
                           loss_fn: Optional[Callable[[], Any]] = None,
                           aggregator: Optional[Any] = None,
                           **settings_fields: Any) -> PersonalizedProcess:
  """pFedPara as a TFF template (`PersonalizedProcess`); arguments as `build_pfedpara_driver`."""
  return build_pfedpara_driver(keras_model_fn, element_spec, settings, loss_fn=loss_fn,
                               aggregator=aggregator, **settings_fields).iterative_process


def build_fedper_process(keras_model_fn: KerasModelFn, element_spec: Any,
                         local_layers: Sequence[str],
                         settings: Optional[settings_lib.RoundSettings] = None, *,
                         loss_fn: Optional[Callable[[], Any]] = None,
                         aggregator: Optional[Any] = None,
                         **settings_fields: Any) -> PersonalizedProcess:
  """FedPer as a TFF template (`PersonalizedProcess`); arguments as `build_fedper_driver`."""
  return build_fedper_driver(keras_model_fn, element_spec, local_layers, settings,
                             loss_fn=loss_fn, aggregator=aggregator,
                             **settings_fields).iterative_process


def build_local_only_process(keras_model_fn: KerasModelFn, element_spec: Any,
                             settings: Optional[settings_lib.RoundSettings] = None, *,
                             loss_fn: Optional[Callable[[], Any]] = None,
                             **settings_fields: Any) -> PersonalizedProcess:
  """Local-only training as a TFF template (`PersonalizedProcess`), as `build_local_only_driver`."""
  return build_local_only_driver(keras_model_fn, element_spec, settings, loss_fn=loss_fn,
                                 **settings_fields).iterative_process
