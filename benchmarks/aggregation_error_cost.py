r"""What measuring the aggregation error costs a round, on both backends, measured in one run.

The shared round (`fedpara_tff.build_fedavg_driver`) of the small FedPara CNN (gamma 0.1, the
binaries' model) on 8 clients x 100 real MNIST digits (1 epoch, batch 20), timed with the
aggregation error (`fedpara_tff.aggregation_error`, on by default) and without it (the same round
built with no kernel to measure), on `backend=tff` and `backend=tf`. The rounds of the two
drivers alternate, so that both see the same load; the first round of each (tracing) is not
timed, and the median of the rest is reported with the ratio with / without.

  python -m benchmarks.aggregation_error_cost --rounds=11
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


def _driver(backend, spec, measured):
  """The shared round's driver; `measured=False` builds it with no kernel to measure."""
  import fedpara_tff  # pylint: disable=g-import-not-at-top
  from fedpara_tff import aggregation_error  # pylint: disable=g-import-not-at-top
  from fedpara_tff import tf_backend  # pylint: disable=g-import-not-at-top
  executor = None if backend == 'tff' else tf_backend.on_devices()
  if measured:
    return fedpara_tff.build_fedavg_driver(_keras_model, spec, client_learning_rate=0.05,
                                           client_executor=executor)
  with mock.patch.object(aggregation_error, 'kernel_maps', lambda model, index: []):
    return fedpara_tff.build_fedavg_driver(_keras_model, spec, client_learning_rate=0.05,
                                           client_executor=executor)


def main(argv):
  flagfiles.no_positional(argv, 'aggregation_error_cost')
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
        f'median of rounds 2..{_ROUNDS.value}, the two drivers alternating; '
        f'{os.cpu_count()} CPU cores')
  print(f'{"backend":<8} {"with s/round":>13} {"without s/round":>16} {"with / without":>15}')
  for backend in ('tff', 'tf'):
    drivers = {measured: _driver(backend, spec, measured) for measured in (True, False)}
    states = {m: d.initialize() for m, d in drivers.items()}
    times = {True: [], False: []}
    for _ in range(_ROUNDS.value):
      for measured, driver in drivers.items():
        start = time.perf_counter()
        states[measured], metrics = driver.next(states[measured], ids, datasets)
        times[measured].append(time.perf_counter() - start)
        assert ('aggregation_error' in metrics) == measured
    with_, without = (statistics.median(times[m][1:]) for m in (True, False))
    print(f'{backend:<8} {with_:>13.3f} {without:>16.3f} {with_ / without:>15.3f}')


def _load():
  """TensorFlow and the layers, loaded before absl runs `main` (`flagfiles.run_main`)."""
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import keras_layers  # pylint: disable=g-import-not-at-top
  keras_layers.load_layers()


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load)
