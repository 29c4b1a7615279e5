"""The in-process TensorFlow backend: the whole round in this Python process, no TFF worker.

TFF 0.87's `worker_binary` is built without CUDA, so TFF cannot put client work on a GPU; and
it is a server on a socket (docs/DESIGN.md, "Who can reach a TFF worker"). `DeviceClients`, a
client executor (`fedpara_tff.client_executors`), runs the same round as TFF does for a driver
(pFedPara, FedPer, local-only, or FedAvg from `build_fedavg_driver`;
`client_executor=on_devices(devices)`) without TFF's runtime:

* each sampled client runs `client_work.build_client_train`, the very
  function TFF's client computation wraps, on a model placed on one of
  `devices` (client i of the round goes to device i mod len(devices), or to
  slot i mod (devices x parallel_per_device); slots train their clients
  concurrently, one thread each);
* the initial state, the aggregation, the server step, the round metrics and the new server
  state are `fedpara_tff.in_process_round`'s, the functions TFF's round wraps, run here; the
  personalised evaluation is `client_work.build_client_eval` on a device model. The reading
  and storing of client state is the driver's, around the executor's `train`.

So a TF-backend driver starts no TFF worker and opens no socket: it is the way to run where a
TFF worker cannot be isolated (a container without user namespaces). The one exception is a
round whose aggregation is a TFF process (quantization, or an inner TFF aggregation factory:
`in_process_round.why_not_in_process`): its server half runs on TFF's local worker
(`uses_local_runtime`), under the rule of `fedpara_tff.local_worker`.

Same seed, same data: the same weights and byte counts as the TFF backend.
"""

import concurrent.futures
import threading

import numpy as np
import tensorflow as tf

from fedpara_tff import client_executors
from fedpara_tff import client_work
from fedpara_tff import in_process_round


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


def on_devices(devices=('/CPU:0',), parallel_per_device=1):
  """A driver's `client_executor` factory: `DeviceClients` on `devices`."""
  return lambda round_: DeviceClients(round_, devices, parallel_per_device)


class DeviceClients(client_executors.ServerHalf):
  """A client executor training a round's sampled clients on TF `devices` in this process.

  Args:
    round_: the driver's `fedpara_tff.stateful_round.StatefulRound` (it supplies the model,
      the client function and the round's layout and settings).
    devices: TF device names, e.g. `['/GPU:0', '/GPU:1']` or logical CPUs.
    parallel_per_device: clients trained at once on each device (each with
      its own model copy); client i of a round goes to slot i mod (devices x
      parallel_per_device). On a CPU, more than 1 keeps the cores busy with
      small batches.
  """

  def __init__(self, round_, devices=('/CPU:0',), parallel_per_device=1):
    if not devices:
      raise ValueError('devices must name at least one device.')
    known = {d.name.replace('/device:', '/').upper() for d in tf.config.list_logical_devices()}
    for device in devices:
      if device.replace('/device:', '/').upper() not in known:
        raise ValueError(f'device {device!r} does not exist here; logical devices: '
                         f'{sorted(known)}.')
    if not isinstance(parallel_per_device, int) or parallel_per_device < 1:
      raise ValueError(f'parallel_per_device must be an integer >= 1; got {parallel_per_device!r}.')
    self.round = round_
    self.devices = list(devices)
    self.slots = [d for _ in range(parallel_per_device) for d in self.devices]
    # The server half: in this process, or TFF's computations when the aggregation is TFF's,
    # traced before the eager device models below (`StatefulRound`: a later trace would leave
    # them unusable).
    self.uses_local_runtime = in_process_round.why_not_in_process(round_) is not None
    if self.uses_local_runtime:
      _ = round_.trace
    self.server = round_ if self.uses_local_runtime else in_process_round.InProcessRound(round_)
    self._clients = []  # per slot: (model, client work on it), built on the slot's device
    for device in self.slots:
      with tf.device(device):
        model = round_.keras_model_fn()
        self._clients.append((model, round_.client_train(model)))
    self.placements = []  # (client id, device) of the last round, in client order
    # The first call of each slot's client function traces it; traces run one at a time:
    # TensorFlow 2.14's op dispatch cache is not safe under concurrent tracing ("OrderedDict
    # mutated during iteration", seen with factor_lr_scale='safe', whose gradient traces the
    # composition again).
    self._trace_lock = threading.Lock()
    self._traced = [False] * len(self.slots)
    self._evaluate = None

  def running(self):
    """Where the driver's TFF computations run: the installed TFF context (only a server half
    that is TFF's runs any)."""
    return client_executors.running_on(None)

  def evaluate(self, global_values, datasets, local_states):
    """Each client's personalised accuracy, on the first slot's model: one
    `OrderedDict(accuracy, num_examples)` per client, in order."""
    model, _ = self._clients[0]
    if self._evaluate is None:
      self._evaluate = self.round.parts.client_eval(model)
    received = [tf.constant(v) for v in global_values]
    with tf.device(self.slots[0]):
      return [tf.nest.map_structure(lambda t: t.numpy(), self._evaluate(
          received, [tf.constant(v) for v in local_values], dataset))
              for dataset, local_values in zip(datasets, local_states)]

  def _train_on(self, slot, jobs, received, learning_rate):
    _, train = self._clients[slot]
    results = []
    with tf.device(self.slots[slot]):
      for position, local_values, dataset in jobs:
        if self._traced[slot]:
          out = train(received, local_values, dataset, learning_rate)
        else:
          with self._trace_lock:
            out = train(received, local_values, dataset, learning_rate)
          self._traced[slot] = True
        results.append((position, tf.nest.map_structure(lambda t: t.numpy(), out)))
    return results

  def train(self, state, client_ids, datasets, local_states):
    """The clients on the devices, then the round's `finish_round` (in this process, or TFF's);
    returns `(state, new local states in the clients' order, metrics)`."""
    self.placements = [(client, self.slots[p % len(self.slots)])
                       for p, client in enumerate(client_ids)]
    server = self.server
    with self.running():
      learning_rate = np.float32(server.learning_rate_at(state['round_num']))
      received = [tf.constant(v) for v in server.received(state)]
    jobs = [[] for _ in self.slots]
    for position, (dataset, local_values) in enumerate(zip(datasets, local_states)):
      jobs[position % len(self.slots)].append(
          (position, [tf.constant(v) for v in local_values], dataset))
    with concurrent.futures.ThreadPoolExecutor(len(self.slots)) as pool:
      done = pool.map(lambda s: self._train_on(s, jobs[s], received, learning_rate),
                      range(len(self.slots)))
      results = dict(item for device_results in done for item in device_results)
    gathered = client_work.gather([results[p] for p in range(len(datasets))])
    with self.running():
      new_state, metrics = server.finish_round(state, *gathered.for_server())
    return new_state, [list(values) for values in gathered.new_local], metrics
