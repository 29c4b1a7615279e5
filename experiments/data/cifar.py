"""CIFAR-10 / CIFAR-100 from the python pickle batches users download.

CIFAR-10: `<data_dir>/cifar-10-batches-py/data_batch_1..5` and `test_batch`;
CIFAR-100: `<data_dir>/cifar-100-python/train` and `test` (fine labels). Each
pickle holds `b'data'` (N x 3072 uint8, channel-major) and the labels.
"""

import os
import pickle

import numpy as np

from experiments.data import common

_LAYOUT = {
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], 'test_batch',
                b'labels', 10, 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'),
    'cifar100': ('cifar-100-python', ['train'], 'test', b'fine_labels', 100,
                 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'),
}


def _read_batch(path, label_key):
  try:
    with open(path, 'rb') as f:
      batch = pickle.load(f, encoding='bytes')
    data = np.asarray(batch[b'data'], np.uint8)
    labels = np.asarray(batch[label_key], np.int32)
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
    raise common.CorruptDataError(f'CIFAR batch {path} is corrupt or truncated: {e!r}') from e
  if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
    raise common.CorruptDataError(f'CIFAR batch {path}: data {data.shape}, labels '
                                  f'{labels.shape}; expected (N, 3072) and (N,).')
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
  return images, labels


def load_cifar(name, data_dir):
  """`name` is `'cifar10'` or `'cifar100'`; images `(32, 32, 3)` in [0, 1].

  The batches are pickles, and unpickling a file runs whatever code it holds: they are read
  only from the folder the user names (`data_dir`), never from a default such as the current
  folder.
  """
  folder, train_files, test_file, label_key, num_classes, url = _LAYOUT[name]
  hint = (f'download {url}, unpack it and pass --data_dir=DIR where DIR/{folder}/ holds '
          f'{", ".join(train_files)} and {test_file}')
  if not data_dir:
    raise common.DataNotFoundError(
        f'{name} needs --data_dir: its batches are pickles, read only from a folder you name '
        f'(unpickling runs any code a file holds); {hint}.')
  root = os.path.join(data_dir, folder)
  parts = [_read_batch(common.require_file(os.path.join(root, f), name, hint), label_key)
           for f in train_files]
  x_test, y_test = _read_batch(common.require_file(os.path.join(root, test_file), name, hint),
                               label_key)
  return common.Dataset(name, np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]), x_test, y_test, num_classes)


def write_cifar_batch(path, images, labels, label_key=b'labels'):
  """Writes uint8 `(N, 32, 32, 3)` images in the CIFAR pickle form (for tests and tools)."""
  data = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
  with open(path, 'wb') as f:
    pickle.dump({b'data': data, label_key: list(map(int, labels))}, f)
