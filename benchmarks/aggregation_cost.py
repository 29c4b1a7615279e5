r"""What the aggregation error and the kernel-mean aggregation cost a round, measured in one run.

The shared round (`fedpara_tff.build_fedavg_driver`) of the small FedPara CNN (gamma 0.1, the
binaries' model) on 8 clients x 100 real MNIST digits (1 epoch, batch 20), on `backend=tff` and
`backend=tf`, built three ways: the default (factor mean, with the aggregation error,
`fedpara_tff.aggregation_error`), the same without the aggregation error (no kernel to measure),
and with `aggregation='kernel_mean'` (`fedpara_tff.kernel_mean`). The rounds of the three drivers
alternate, so that all see the same load; the first round of each (tracing) is not timed, and
the median of the rest is reported, with each one's ratio to the round without the metric.

  python -m benchmarks.aggregation_cost --rounds=11
"""

import collections
import os
import statistics
import time
from unittest import mock

from absl import flags
from absl import logging

from experiments import flagfiles

_ROUNDS = flags.DEFINE_integer('rounds', 8, 'Rounds per driver (the first is not timed).')
_CLIENTS = flags.DEFINE_integer('clients', 8, 'Clients per round.')
_EXAMPLES = flags.DEFINE_integer('examples', 100, 'Examples per client.')
flags.register_validator('rounds', lambda v: v >= 2, 'rounds must be >= 2.')

BATCH = 20


def _keras_model():
  import keras_layers as kl  # pylint: disable=g-import-not-at-top
  from experiments import models  # pylint: disable=g-import-not-at-top
  return kl.convert(models.small_cnn(), 'fedpara', gamma=0.1, exclude=['logits'],
                    copy_weights=False)


def _driver(backend, spec, kind):
  """The shared round's driver: `kind` 'default', 'no_metric' (built with no kernel to measure)
  or 'kernel_mean'."""
  import fedpara_tff  # pylint: disable=g-import-not-at-top
  from fedpara_tff import aggregation_error  # pylint: disable=g-import-not-at-top
  from fedpara_tff import tf_backend  # pylint: disable=g-import-not-at-top
  executor = None if backend == 'tff' else tf_backend.on_devices()
  options = dict(client_learning_rate=0.05, client_executor=executor)
  if kind == 'kernel_mean':
    options['aggregation'] = 'kernel_mean'
  if kind != 'no_metric':
    return fedpara_tff.build_fedavg_driver(_keras_model, spec, **options)
  with mock.patch.object(aggregation_error, 'kernel_maps', lambda model, index: []):
    return fedpara_tff.build_fedavg_driver(_keras_model, spec, **options)


def main(argv):
  flagfiles.no_positional(argv, 'aggregation_cost')
  logging.set_verbosity(logging.WARNING)
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import fedpara_tff
  from experiments.data import mnist5k
  # pylint: enable=g-import-not-at-top
  fedpara_tff.runtime.install()
  images, labels = mnist5k.load()
  n, k = _CLIENTS.value, _EXAMPLES.value
  spec = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32),
                                 y=tf.TensorSpec([None], tf.int32))
  datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=images[i * k:(i + 1) * k], y=labels[i * k:(i + 1) * k])).batch(BATCH) for i in range(n)]
  ids = [str(i) for i in range(n)]
  print(f'{n} clients x {k} MNIST digits, 1 epoch, batch {BATCH}, FedPara small CNN (gamma 0.1); '
        f'median of rounds 2..{_ROUNDS.value}, the drivers alternating; '
        f'{os.cpu_count()} CPU cores')
  kinds = ('no_metric', 'default', 'kernel_mean')
  print(f'{"backend":<8} {"no metric s":>12} {"default s":>10} {"kernel_mean s":>14} '
        f'{"default / no metric":>20} {"kernel_mean / no metric":>24}')
  for backend in ('tff', 'tf'):
    drivers = {kind: _driver(backend, spec, kind) for kind in kinds}
    states = {kind: driver.initialize() for kind, driver in drivers.items()}
    times = {kind: [] for kind in kinds}
    for _ in range(_ROUNDS.value):
      for kind, driver in drivers.items():
        start = time.perf_counter()
        states[kind], metrics = driver.next(states[kind], ids, datasets)
        times[kind].append(time.perf_counter() - start)
        assert ('aggregation_error' in metrics) == (kind != 'no_metric')
    bare, default, refit = (statistics.median(times[kind][1:]) for kind in kinds)
    print(f'{backend:<8} {bare:>12.3f} {default:>10.3f} {refit:>14.3f} {default / bare:>20.3f} '
          f'{refit / bare:>24.3f}')


def _load():
  """TensorFlow and the layers, loaded before absl runs `main` (`flagfiles.run_main`)."""
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import keras_layers  # pylint: disable=g-import-not-at-top
  keras_layers.load_layers()


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load)
