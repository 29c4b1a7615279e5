r"""Pretrains a plain zoo model centrally and writes its weights: what `--pretrained` reads.

The federated fine-tuning runs (docs/USAGE.md, "Adapters") start from a model trained elsewhere.
This binary trains the plain `--model` on the training pool of `--dataset`, optionally on some of
its classes only (`--classes=0,1,2,3,4`: the rest are left for the federated clients), with Adam,
and writes its weights to the HDF5 file `--output` (refusing to replace an existing file unless
`--overwrite`). It prints one JSON line: test accuracy on the pretraining classes and on all. On
a text set (`--dataset=shakespeare --model=lstm`) it trains next-character prediction on every
training sequence (no `--classes`).

  python -m experiments.pretrain --dataset=fashion_mnist --model=small_cnn \
      --classes=0,1,2,3,4 --epochs=2 --output=runs/pretrained/fashion_cnn_5.h5
"""

# TensorFlow and the model zoo load in `main`, once the flags are parsed (docs/DESIGN.md,
# "Fast start").
import importlib
import json
import os

from absl import flags

from experiments import flagfiles
from experiments import pretraining
from experiments import run_config
from experiments.data import registry

_DATASET = flags.DEFINE_enum('dataset', 'fashion_mnist', registry.DATASETS, 'Data set.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the data files are (default: the '
                                'loader\'s own, as experiments.train).')
_DOWNLOAD = flags.DEFINE_bool('download', False, 'Let TFF download its SQLite caches.')
_MODEL = flags.DEFINE_enum('model', 'small_cnn', run_config.MODELS, 'Model of the zoo (plain).')
_CLASSES = flags.DEFINE_list('classes', [], 'Labels to pretrain on (default: every label).')
_EPOCHS = flags.DEFINE_integer('epochs', 2, 'Passes over the pretraining examples.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Mini-batch size.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and the shuffling.')
_OUTPUT = flags.DEFINE_string('output', None, 'HDF5 weights file to write (*.h5).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --output file.')

flags.register_validator('epochs', lambda v: v >= 1, '--epochs must be an integer >= 1.')
flags.register_validator('batch_size', lambda v: v >= 1, '--batch_size must be an integer >= 1.')
flags.register_validator('learning_rate', lambda v: v > 0, '--learning_rate must be > 0.')
# Keras writes `*.weights.h5` in its newer format, which matches layers by their generated names
# (`max_pooling2d_3`), which differ between processes; plain `.h5` matches them in order.
flags.register_validator(
    'output', lambda v: v is None or (v.endswith('.h5') and not v.endswith('.weights.h5')),
    '--output must name an HDF5 file ending in .h5, not .weights.h5.')
flags.mark_flag_as_required('output')


def main(argv):
  flagfiles.no_positional(argv, 'pretrain')
  try:
    summary = pretraining.pretrain(
        _DATASET.value, _DATA_DIR.value, _DOWNLOAD.value, _MODEL.value, _CLASSES.value,
        _EPOCHS.value, _BATCH_SIZE.value, _LEARNING_RATE.value, _SEED.value,
        os.path.expanduser(_OUTPUT.value), _OVERWRITE.value)
  except ValueError as error:
    raise SystemExit(f'pretrain: {error}') from None
  print(json.dumps(summary))


def _load_heavy_modules():
  importlib.import_module('tensorflow')


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load_heavy_modules)
