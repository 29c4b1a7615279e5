r"""Per-round wall time of the TFF FedPara process vs a plain TensorFlow loop, in one run.

Both do the same work each round: 10 clients, each trains the small FedPara CNN
for one epoch of SGD over its 100 real MNIST digits (batch 20) from the global
weights, then the server takes the example-weighted mean. TFF runs
`fedpara_tff.build_fedpara_process` on its C++ runtime; the plain loop runs one
`tf.function` epoch per client and averages with numpy. Rounds after the first
(tracing) are timed; the median is reported. Two plain loops are timed: one
`tf.function` per client epoch over the dataset, and one `tf.function` per step
with the dataset iterated in Python. Target: TFF / plain <= 1.5.

The TFF process runs on this project's local worker (`fedpara_tff.runtime.install()`: TFF's
`worker_binary` in a private network namespace, reached through a Unix-socket bridge, so no port
is open to the network). With `--open_baseline` it is also timed on TFF's own local context (the
same binary on a TCP port of every interface, open while it runs), and `isolated / open` is the
per-round cost of the isolation.

The project's own round (the binaries' FedAvg, `fedpara_tff.build_fedavg_driver`)
is timed in the same run on both backends (`backend=tff`: TFF's runtime;
`backend=tf`: clients as `tf.function`s in this process, then the round's
`finish_round`), so its cost is read against TFF's own FedAvg builder.

  python -m benchmarks.tff_round_speed --rounds=11 --open_baseline
"""

import collections
import os
import statistics
import time

from absl import flags
import numpy as np
import tensorflow as tf

import fedpara_tff
from fedpara_tff import tf_backend
import keras_layers as kl
import tensorflow_federated as tff
from experiments import flagfiles
from experiments import models
from experiments.data import mnist5k

_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Rounds per implementation (the first is not timed).')
_CLIENTS = flags.DEFINE_integer('clients', 10, 'Clients per round.')
_EXAMPLES = flags.DEFINE_integer('examples', 100, 'Examples per client.')
_LOOP = flags.DEFINE_enum('loop', 'DATASET_ITERATOR', ['DATASET_REDUCE', 'DATASET_ITERATOR'],
                          'tff.learning.LoopImplementation of the TFF client loop.')
_OPEN_BASELINE = flags.DEFINE_bool(
    'open_baseline', False, "Also time TFF's own local context (its worker listens on every "
    'interface while it runs) for the cost of the isolation.')
flags.register_validator('rounds', lambda v: v >= 2, 'rounds must be >= 2.')

BATCH = 20
LEARNING_RATE = 0.05
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def keras_model():
  return kl.convert(models.small_cnn(), 'fedpara', gamma=0.1, exclude=['logits'],
                    copy_weights=False)


model_fn = fedpara_tff.keras_model_fn_to_tff(keras_model, SPEC)


def plain_round_fn(model, per_step):
  """One FedAvg round in plain TF; numpy example-weighted mean of the clients' weights.

  `per_step=False`: one `tf.function` runs the whole epoch over the dataset.
  `per_step=True`: Python iterates the dataset and a `tf.function` does each step.
  """
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = loss_fn(batch['y'], model(batch['x'], training=True))
    for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
      v.assign_sub(LEARNING_RATE * g)

  @tf.function
  def epoch(dataset):
    for batch in dataset:
      step(batch)

  def train(dataset):
    if per_step:
      for batch in dataset:
        step(batch)
    else:
      epoch(dataset)

  def run(global_weights, datasets, sizes):
    summed = [np.zeros_like(w) for w in global_weights]
    for dataset, size in zip(datasets, sizes):
      model.set_weights(global_weights)
      train(dataset)
      for total, w in zip(summed, model.get_weights()):
        total += size * w
    return [total / sum(sizes) for total in summed]

  return run


def timed(fn, rounds):
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main(argv):
  flagfiles.no_positional(argv, 'tff_round_speed')
  fedpara_tff.runtime.install()
  images, labels = mnist5k.load()
  n, k = _CLIENTS.value, _EXAMPLES.value
  datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      x=images[i * k:(i + 1) * k], y=labels[i * k:(i + 1) * k])).batch(BATCH) for i in range(n)]
  sizes = [k] * n

  process = fedpara_tff.build_fedpara_process(
      model_fn, client_learning_rate=LEARNING_RATE, keras_model_fn=keras_model,
      loop_implementation=getattr(tff.learning.LoopImplementation, _LOOP.value))
  state = [process.initialize()]

  def tff_round():
    state[0] = process.next(state[0], datasets).state

  results = [('TFF process', timed(tff_round, _ROUNDS.value))]
  if _OPEN_BASELINE.value:
    open_context = tff.backends.native.create_sync_local_cpp_execution_context()
    with tff.framework.get_context_stack().install(open_context):
      state[0] = process.initialize()
      results.append(('TFF process, open', timed(tff_round, _ROUNDS.value)))
    del open_context   # TFF's ServiceManager stops its worker now, not at interpreter teardown
  ids = [str(i) for i in range(n)]
  for name, backend in (('shared round, tff', 'tff'), ('shared round, tf', 'tf')):
    runner = fedpara_tff.build_fedavg_driver(
        keras_model, SPEC, client_learning_rate=LEARNING_RATE,
        client_executor=None if backend == 'tff' else tf_backend.on_devices())
    shared_state = [runner.initialize()]

    def shared_round(runner=runner, shared_state=shared_state):
      shared_state[0] = runner.next(shared_state[0], ids, datasets)[0]

    results.append((name, timed(shared_round, _ROUNDS.value)))
  for name, per_step in (('plain, epoch fn', False), ('plain, step fn', True)):
    model = keras_model()
    run = plain_round_fn(model, per_step)
    weights = [model.get_weights()]

    def plain_round(run=run, weights=weights):
      weights[0] = run(weights[0], datasets, sizes)

    results.append((name, timed(plain_round, _ROUNDS.value)))

  steady = {name: statistics.median(times[1:]) for name, times in results}
  print(f'{n} clients x {k} real MNIST digits, 1 epoch, batch {BATCH}, FedPara small CNN '
        f'({model.count_params():,} params); median of rounds 2..{_ROUNDS.value}; '
        f'{os.cpu_count()} CPU cores; TFF loop {_LOOP.value}')
  print(f'{"implementation":<18} {"first round s":>14} {"steady s/round":>15} {"TFF / this":>11}')
  for name, times in results:
    print(f'{name:<18} {times[0]:>14.3f} {steady[name]:>15.3f} '
          f'{steady["TFF process"] / steady[name]:>11.2f}')
  print('target: TFF / plain <= 1.5')
  if _OPEN_BASELINE.value:
    print(f'isolation cost: TFF process on the isolated worker / on TFF\'s open-port worker = '
          f'{steady["TFF process"] / steady["TFF process, open"]:.3f} per round')


if __name__ == '__main__':
  flagfiles.run_main(main)
