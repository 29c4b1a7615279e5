"""The in-process TensorFlow backend: clients trained as `tf.function`s on local devices.

TFF 0.87's `worker_binary` is built without CUDA, so TFF cannot put client work
on a GPU. This backend runs the same round as a `PersonalizedDriver` (pFedPara,
FedPer, local-only, or FedAvg from `build_fedavg_driver`) with the client half
in this Python process:

* each sampled client runs `personalization.build_client_train`, the very
  function TFF's client computation wraps, on a model placed on one of
  `devices` (client i of the round goes to device i mod len(devices), or to
  slot i mod (devices x parallel_per_device); slots train their clients
  concurrently, one thread each);
* the aggregation, the server step, the learning-rate schedule and the round
  metrics are the trainer's own TFF computations, called with the clients'
  results (they run on TFF's local CPU runtime; they are small).

Same seed, same data: the same weights and byte counts as the TFF backend.
"""

import collections
import concurrent.futures

import numpy as np
import tensorflow as tf

from fedpara_tff import personalization


def resolve_devices(gpus):
  """Device names for `gpus` (`''`: CPU; `'all'`; or indices like `'0,1'`); memory growth on.

  Returns:
    `(devices, note)`: the TF device names, and a one-line note when no GPU
    is used (`None` otherwise).

  Raises:
    ValueError: an index that names no GPU of this machine, or a malformed list.
  """
  physical = tf.config.list_physical_devices('GPU')
  if gpus in (None, ''):
    chosen = []
  elif gpus == 'all':
    chosen = list(range(len(physical)))
  else:
    entries = [g.strip() for g in gpus.split(',')]
    if not all(e.isdigit() for e in entries) or len(set(entries)) != len(entries):
      raise ValueError(f'gpus must be "all" or distinct GPU indices like "0,1"; got {gpus!r}.')
    chosen = [int(e) for e in entries]
    missing = [i for i in chosen if i >= len(physical)]
    if missing:
      raise ValueError(f'gpus={gpus!r} names GPU {missing[0]}, but this machine has '
                       f'{len(physical)} GPU(s){" (none)" if not physical else ""}.')
  if not chosen:
    return ['/CPU:0'], ('tf backend: no GPU requested or found; clients train on the CPU '
                        '(/CPU:0).')
  for index in chosen:
    try:
      tf.config.experimental.set_memory_growth(physical[index], True)
    except RuntimeError:
      pass  # already initialised: growth is set before first use or not at all
  return [f'/GPU:{i}' for i in chosen], None


class TFBackend:
  """Runs a `PersonalizedDriver`'s rounds with client training on `devices`.

  Same interface as the trainer: `initialize`, `next`, `evaluate`,
  `local_state`, `local_store`.

  Args:
    trainer: a `PersonalizedDriver` (it supplies the model, the client
      function and the TFF aggregation / server / metric computations).
    devices: TF device names, e.g. `['/GPU:0', '/GPU:1']` or logical CPUs.
    parallel_per_device: clients trained at once on each device (each with
      its own model copy); client i of a round goes to slot i mod (devices x
      parallel_per_device). On a CPU, more than 1 keeps the cores busy with
      small batches.
  """

  def __init__(self, trainer, devices=('/CPU:0',), parallel_per_device=1):
    if not devices:
      raise ValueError('devices must name at least one device.')
    known = {d.name.replace('/device:', '/').upper() for d in tf.config.list_logical_devices()}
    for device in devices:
      if device.replace('/device:', '/').upper() not in known:
        raise ValueError(f'device {device!r} does not exist here; logical devices: '
                         f'{sorted(known)}.')
    if not isinstance(parallel_per_device, int) or parallel_per_device < 1:
      raise ValueError(f'parallel_per_device must be an integer >= 1; got {parallel_per_device!r}.')
    self.trainer = trainer
    self.devices = list(devices)
    self.slots = [d for _ in range(parallel_per_device) for d in self.devices]
    self._clients = []  # per slot: (model, train function), built on the slot's device
    for device in self.slots:
      with tf.device(device):
        model = trainer.keras_model_fn()
        self._clients.append((model, personalization.build_client_train(
            model, trainer.loss_fn(), trainer.split, trainer.local_epochs,
            trainer.jacobian_correction, trainer.client_optimizer, trainer.algorithm,
            trainer.client_momentum)))
    self.placements = []  # (client id, device) of the last round, in client order

  @property
  def local_store(self):
    return self.trainer.local_store

  @property
  def local_layout(self):
    return self.trainer.local_layout

  def use_store(self, store):
    self.trainer.use_store(store)

  def initialize(self, initial_weights=None):
    return self.trainer.initialize(initial_weights)

  def local_state(self, client_id):
    return self.trainer.local_state(client_id)

  def _train_on(self, slot, jobs, global_values, learning_rate):
    _, train = self._clients[slot]
    results = []
    with tf.device(self.slots[slot]):
      for position, local_values, dataset in jobs:
        out = train(global_values, local_values, dataset, learning_rate)
        results.append((position, tf.nest.map_structure(lambda t: t.numpy(), out)))
    return results

  def next(self, state, client_ids, datasets):
    """One round; returns `(state, metrics)` shaped like the trainer's."""
    client_ids = personalization.check_round_clients(client_ids, datasets)
    learning_rate = np.float32(self.trainer.learning_rate_at(state['round_num']))
    algorithm = self.trainer.algorithm
    control = state['control'] if algorithm.server_state else self.trainer.init_control()
    received = list(state['global_weights']) + (list(control) if algorithm.broadcast_control
                                                else [])
    global_values = [tf.constant(v) for v in received]
    jobs = [[] for _ in self.slots]
    self.placements = []
    local_states = self.trainer.local_states(client_ids)
    for position, (client, dataset) in enumerate(zip(client_ids, datasets)):
      slot = position % len(self.slots)
      local_values = [tf.constant(v) for v in local_states[position]]
      jobs[slot].append((position, local_values, dataset))
      self.placements.append((client, self.slots[slot]))
    with concurrent.futures.ThreadPoolExecutor(len(self.slots)) as pool:
      done = pool.map(lambda s: self._train_on(s, jobs[s], global_values, learning_rate),
                      range(len(self.slots)))
      results = dict(item for device_results in done for item in device_results)
    ordered = [results[p] for p in range(len(client_ids))]
    uploads, new_local, weights, examples, loss_sums, correct, diverged = zip(*ordered)
    weights = [np.float32(w) for w in weights]
    aggregated = self.trainer.aggregation.next(state['aggregator'], list(uploads), weights)
    new_global, new_control = self.trainer.server_update(
        state['global_weights'], control, aggregated.result, np.float32(np.sum(weights)))
    train_metrics = self.trainer.round_metrics(
        np.float32(np.sum(loss_sums, dtype=np.float32)), np.float32(np.sum(examples)),
        np.float32(np.sum(correct)), np.int32(np.sum(diverged)), np.int32(len(client_ids)))
    self.trainer.store_locals(list(client_ids), list(new_local))
    new_state = collections.OrderedDict(
        global_weights=new_global, aggregator=aggregated.state,
        round_num=self.trainer.increment(state['round_num']))
    if algorithm.server_state:
      new_state['control'] = new_control
    return new_state, collections.OrderedDict(train=train_metrics,
                                              aggregator=aggregated.measurements)

  def evaluate(self, state, client_ids, datasets):
    return self.trainer.evaluate(state, client_ids, datasets)
