r"""Per-round wall time of one FedAvg round on both backends and on 1, 2, 4 remote TFF workers.

Each round: the clients each train the small FedPara CNN for one epoch of SGD
over their real MNIST digits, then the example-weighted mean and the server
step. The same round (`fedpara_tff.build_fedavg_driver`) runs on TFF's
in-process C++ runtime (`backend=tff`), with client training in this process
on TensorFlow (`backend=tf`, `fedpara_tff.tf_backend`, here on the CPU), and
through `fedpara_tff.distributed.RemoteWorkers` on N workers of this host
(started with `experiments.launch_workers --tls_dir`: mutual TLS in front of a
worker in a private network namespace, certificates made for the run by
`scripts/make_worker_certs.sh`), where TFF's mergeable context gives each
worker a sub-round of the clients. With `--insecure_baseline` the same counts
also run on plain workers (`launch_workers --insecure`: the same isolated worker
behind a plain, unauthenticated forwarder on loopback), and `TLS / plain` is the
per-round cost of TLS.
Rounds after the first (tracing, and for remote workers shipping the
computation) are timed; the median is reported with its ratio to the local TFF
runtime, all in one run.

  python -m benchmarks.worker_round_speed --rounds=5 --workers=1,2,4 --insecure_baseline
"""

import collections
import os
import statistics
import subprocess
import tempfile
import time

from absl import flags
from absl import logging
import numpy as np
import portpicker
import tensorflow as tf

import fedpara_tff
from fedpara_tff import distributed
from fedpara_tff import runtime
from fedpara_tff import tf_backend
from fedpara_tff import worker_tls
import keras_layers as kl
from experiments import flagfiles
from experiments import launch_workers
from experiments import models
from experiments.data import mnist5k

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds per setting (the first is not timed).')
_CLIENTS = flags.DEFINE_integer('clients', 8, 'Clients per round.')
_EXAMPLES = flags.DEFINE_integer('examples', 100, 'Examples per client.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2', '4'], 'Worker counts to time.')
_INSECURE_BASELINE = flags.DEFINE_bool(
    'insecure_baseline', False, 'Also time plain workers (unauthenticated, on loopback) for '
    'the cost of TLS.')
flags.register_validator('rounds', lambda v: v >= 2, 'rounds must be >= 2.')
flags.register_validator('workers', lambda v: all(s.isdigit() and int(s) >= 1 for s in v),
                         'workers must list integers >= 1.')

SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def keras_model():
  return kl.convert(models.small_cnn(), 'fedpara', gamma=0.1, exclude=['logits'],
                    copy_weights=False)


def client_datasets(clients, examples):
  images, labels = mnist5k.load()
  order = np.random.default_rng(0).permutation(len(labels))
  return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=images[order[i * examples:(i + 1) * examples]],
      y=labels[order[i * examples:(i + 1) * examples]])).batch(20) for i in range(clients)]


def time_rounds(driver, datasets, rounds):
  """`(first round s, median of the later rounds s)`."""
  state = driver.initialize()
  ids = [f'client_{i}' for i in range(len(datasets))]
  times = []
  for _ in range(rounds):
    began = time.perf_counter()
    state, _ = driver.next(state, ids, datasets)
    times.append(time.perf_counter() - began)
  return times[0], statistics.median(times[1:])


def _remote(count, kind, tls_dir, credentials, datasets):
  """One row: `count` workers of `kind` (TLS or plain) on this host, timed."""
  ports = [portpicker.pick_unused_port() for _ in range(count)]
  workers = launch_workers.start(ports, tls_dir=tls_dir)
  try:
    executor = distributed.RemoteWorkers([f'127.0.0.1:{p}' for p in ports], 60,
                                         credentials=credentials)
    driver = fedpara_tff.build_fedavg_driver(keras_model, SPEC, client_learning_rate=0.05,
                                             client_executor=executor)
    first, steady = time_rounds(driver, datasets, _ROUNDS.value)
    return (f'backend=tff, {count} remote worker(s), {kind}', first, steady,
            ', '.join(str(s.clients) for s in executor.shares))
  finally:
    launch_workers.stop(workers)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runtime.install()
  datasets = client_datasets(_CLIENTS.value, _EXAMPLES.value)
  driver = fedpara_tff.build_fedavg_driver(keras_model, SPEC, client_learning_rate=0.05)
  results = [('backend=tff, local TFF runtime', *time_rounds(driver, datasets, _ROUNDS.value),
              None)]
  devices, _ = tf_backend.resolve_devices('')
  for parallel in (1, 2, 4):
    on_devices = fedpara_tff.build_fedavg_driver(
        keras_model, SPEC, client_learning_rate=0.05,
        client_executor=tf_backend.on_devices(devices, parallel_per_device=parallel))
    results.append((f'backend=tf, {devices[0]}, {parallel} client(s) at once',
                    *time_rounds(on_devices, datasets, _ROUNDS.value), None))
  with tempfile.TemporaryDirectory() as certs:
    subprocess.run([os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 'scripts', 'make_worker_certs.sh'), os.path.join(certs, 'run'),
                    '127.0.0.1'], check=True, capture_output=True)
    tls_dir = os.path.join(certs, 'run')
    credentials = worker_tls.channel_credentials(worker_tls.TLSFiles.from_dir(tls_dir, 'driver'))
    kinds = [('TLS', tls_dir, credentials)]
    if _INSECURE_BASELINE.value:
      kinds.append(('plain', None, None))
    for count in map(int, _WORKERS.value):
      for kind, folder, creds in kinds:
        results.append(_remote(count, kind, folder, creds, datasets))
  local = results[0][2]
  print(f'{_CLIENTS.value} clients x {_EXAMPLES.value} digits a round, FedPara small CNN, '
        f'{_ROUNDS.value} rounds (median of rounds 2-{_ROUNDS.value})')
  print(f'{"setting":<40} {"first s":>8} {"steady s":>9} {"vs local":>9}  client values per worker')
  for name, first, steady, shares in results:
    print(f'{name:<40} {first:>8.2f} {steady:>9.3f} {steady / local:>9.2f}  {shares or "-"}')
  steady = {name: value for name, _, value, _ in results}
  for count in map(int, _WORKERS.value):
    plain = steady.get(f'backend=tff, {count} remote worker(s), plain')
    if plain:
      tls = steady[f'backend=tff, {count} remote worker(s), TLS']
      print(f'TLS / plain, {count} worker(s): {tls / plain:.3f} per round')


if __name__ == '__main__':
  flagfiles.run_main(main)
