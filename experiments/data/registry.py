"""Every data set the binaries know, by name, with one `load` entry point.

The loaders that need TensorFlow (CINIC-10's PNGs, TFF's SQLite caches) load when first used, so
that the names are known before TensorFlow loads (docs/DESIGN.md, "Fast start").
"""

import os

from experiments.data import cifar
from experiments.data import common
from experiments.data import idx
from experiments.data import mnist5k
from experiments.data import plays

DATASETS = ('mnist5k', 'fashion_mnist', 'cifar10', 'cifar100', 'cinic10', 'shakespeare',
            'femnist', 'shakespeare_tff', 'cifar100_tff')
NATURAL = ('shakespeare', 'femnist', 'shakespeare_tff', 'cifar100_tff')


def _mnist5k_path(data_dir):
  if data_dir and os.path.isdir(data_dir):
    return os.path.join(data_dir, 'mnist_5k.csv.gz')
  return data_dir


def load(name, data_dir=None, max_clients=None, download=False, sequence_length=80):
  """Loads `name` as a `common.Dataset`.

  Args:
    name: one of `DATASETS`.
    data_dir: where the files are; each loader documents its default.
    max_clients: for naturally federated data, how many clients to load.
    download: let TFF download its SQLite caches when they are missing.
    sequence_length: characters per sequence for the text data sets.

  Raises:
    ValueError: unknown name.
    common.DataNotFoundError: files missing (the message says what to install).
    common.CorruptDataError: files truncated or malformed.
  """
  if name not in DATASETS:
    raise ValueError(f'dataset must be one of {DATASETS}; got {name!r}.')
  return common.validate(_load(name, data_dir, max_clients, download, sequence_length))


def _load(name, data_dir, max_clients, download, sequence_length):
  if name == 'mnist5k':
    return mnist5k.load_dataset(_mnist5k_path(data_dir))
  if name == 'fashion_mnist':
    return idx.load_fashion_mnist(data_dir)
  if name in ('cifar10', 'cifar100'):
    return cifar.load_cifar(name, data_dir)
  if name == 'cinic10':
    from experiments.data import cinic  # pylint: disable=g-import-not-at-top  # TensorFlow
    return cinic.load_cinic10(data_dir)
  if name == 'shakespeare':
    return plays.load_plays(data_dir, sequence_length, max_clients)
  from experiments.data import tff_sqlite  # pylint: disable=g-import-not-at-top  # TensorFlow
  return tff_sqlite.load_tff_sqlite(name, data_dir, max_clients, download, sequence_length)


__all__ = ['DATASETS', 'NATURAL', 'load', 'common']
