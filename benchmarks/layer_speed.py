r"""Train-step time of FedPara layers vs plain Keras layers, as ratios measured in one run.

Each case times a compiled (`tf.function`) SGD train step, forward + backward +
update, on random data of the stated size; the plain and FedPara models are
timed alternately in several rounds and the best per-step time is compared.

Targets (issue "Foundation and keras_layers"): conv <= 1.25x, dense <= 2x,
exported plain model = 1.0x (+-5%) of the plain model. The last column is the
extra cost of the Jacobian correction (lambda 1, `keras_layers.jacobian`):
the FedPara step with it over the FedPara step without it.

On Keras 3 (the optional environment of `make setup-keras3`, any backend, e.g.
JAX on a GPU) each step is Keras' own compiled train step (`train_on_batch`,
XLA-compiled) for every model alike, and the Jacobian-correction column is
"-" (the correction runs on Keras 2 only).

  python -m benchmarks.layer_speed            # full sizes (a few minutes on 2 cores)
  python -m benchmarks.layer_speed --quick    # smaller batches, for a smoke run
  KERAS_BACKEND=jax .venv-keras3/bin/python -m benchmarks.layer_speed --quick
"""

import os
import time

from absl import app
from absl import flags
import numpy as np

import keras_layers as kl
from keras_layers import backend
from keras_layers import jacobian
from keras_layers.backend import keras

_GAMMA = flags.DEFINE_float('gamma', 0.1, 'FedPara rank knob.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating timing rounds per case.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Train steps per timing round.')
_QUICK = flags.DEFINE_bool('quick', False, 'Batch 8 instead of 64 (smoke run).')


def conv_model(channels, size, layer):
  return keras.Sequential([keras.Input((size, size, channels)), layer,
                           keras.layers.GlobalAveragePooling2D()])


def dense_model(width, layer):
  return keras.Sequential([keras.Input((width,)), layer])


def _keras3_step(model):
  """Keras 3's compiled SGD train step on the mean squared output (any backend)."""
  model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True,
                loss=lambda unused_y, y_pred: keras.ops.mean(keras.ops.square(y_pred)))
  targets = {}

  def step(x):
    if id(x) not in targets:
      targets[id(x)] = np.zeros(model.output_shape[1:], np.float32)[None].repeat(len(x), 0)
    return model.train_on_batch(x, targets[id(x)])

  return step


def make_step(model, correction=0.0):
  """A compiled SGD step; with `correction` > 0 the Jacobian correction of that strength."""
  if backend.IS_KERAS_3:
    return _keras3_step(model)
  tf = backend.keras_tensorflow()
  optimizer = tf.keras.optimizers.SGD(0.01)

  @tf.function
  def step(x):
    def objective_fn():
      return tf.reduce_mean(tf.square(model(x, training=True))), None

    loss, _, grads = jacobian.loss_and_gradients(model, objective_fn, model.trainable_variables,
                                                 0.01, correction)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step


def time_steps(step, x, steps):
  backend.to_numpy(step(x))
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(x)
  backend.to_numpy(loss)   # waits for the device
  return (time.perf_counter() - start) / steps


def compare(models, x, rounds, steps):
  """Best (minimum) seconds per train step of each model over alternating rounds.

  The minimum is the figure least disturbed by other load on a shared machine
  (as `timeit` advises); every model gets the same number of rounds.
  """
  steps_fns = {name: make_step(m, 1.0 if name == 'fedpara_jc' else 0.0)
               for name, m in models.items() if not (name == 'fedpara_jc' and backend.IS_KERAS_3)}
  for fn in steps_fns.values():  # trace and warm up
    time_steps(fn, x, 2)
  samples = {name: [] for name in steps_fns}
  for _ in range(rounds):
    for name, fn in steps_fns.items():
      samples[name].append(time_steps(fn, x, steps))
  return {name: min(s) for name, s in samples.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
  batch = 8 if _QUICK.value else 64
  rng = np.random.default_rng(0)
  gamma = _GAMMA.value
  cases = []
  for channels, size in ((128, 32), (512, 4)):
    x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
    fedpara = conv_model(channels, size, kl.FedParaConv2D(channels, 3, padding='same', gamma=gamma))
    cases.append((f'conv {channels}->{channels} 3x3 on {size}x{size}', x, {
        'plain': conv_model(channels, size, keras.layers.Conv2D(channels, 3, padding='same')),
        'fedpara': fedpara,
        'fedpara_jc': fedpara,
        'exported': kl.export(fedpara)}))
  x = rng.normal(size=(batch, 512)).astype(np.float32)
  fedpara = dense_model(512, kl.FedParaDense(512, gamma=gamma))
  cases.append(('dense 512->512', x, {
      'plain': dense_model(512, keras.layers.Dense(512)),
      'fedpara': fedpara,
      'fedpara_jc': fedpara,
      'exported': kl.export(fedpara)}))

  print(f'train step (forward+backward+SGD), batch {batch}, gamma {gamma}, best of '
        f'{_ROUNDS.value} alternating rounds x {_STEPS.value} steps; '
        f'{os.cpu_count()} CPU cores, {_framework()}')
  print(f'{"case":<30} {"rank":>5} {"plain ms":>9} {"fedpara ms":>11} {"fedpara/plain":>14} '
        f'{"exported/plain":>15} {"JC/fedpara":>11}')
  for name, x, models in cases:
    times = compare(models, x, _ROUNDS.value, _STEPS.value)
    rank = models['fedpara'].layers[0].ranks[0]
    print(f'{name:<30} {rank:>5} {times["plain"] * 1e3:>9.2f} {times["fedpara"] * 1e3:>11.2f} '
          f'{times["fedpara"] / times["plain"]:>14.2f} '
          f'{times["exported"] / times["plain"]:>15.2f} '
          f'{_ratio(times, "fedpara_jc", "fedpara"):>11}')


def _ratio(times, a, b):
  return f'{times[a] / times[b]:.2f}' if a in times else '-'


def _framework():
  if backend.IS_KERAS_3:
    return f'Keras {keras.__version__} on {keras.backend.backend()}'
  return f'Keras 2 / TF {backend.keras_tensorflow().__version__}'



if __name__ == '__main__':
  app.run(main)
