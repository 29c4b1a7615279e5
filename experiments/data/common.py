"""What every loader returns, and the two errors loaders raise."""

import dataclasses
import hashlib
import os
import zipfile
from typing import Optional, Sequence, Tuple

import numpy as np


# What numpy / zipfile raise on reading a truncated or corrupted `.npz` file.
NPZ_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class DataNotFoundError(FileNotFoundError):
  """The data is missing; the message says what to install or where to put which file."""


class CorruptDataError(ValueError):
  """A data file exists but is truncated or malformed; the message names it."""


@dataclasses.dataclass
class Dataset:
  """A data set held in memory, before it is split into clients.

  Attributes:
    name: registry name, e.g. `'fashion_mnist'`.
    x_train, y_train: training pool; images float32 `(N, H, W, C)` in [0, 1]
      and int32 labels `(N,)`, or int32 character ids `(N, L)` and their
      next-character targets `(N, L)` for text.
    x_test, y_test: held-out examples of the same form.
    num_classes: number of labels (the vocabulary size for text).
    task: `'image'` or `'text'`.
    train_groups, test_groups: for naturally federated data, the client index
      (into `group_names`) of every training / test example; None otherwise.
    group_names: the natural clients (writers, speaking roles), or ().
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  task: str = 'image'
  train_groups: Optional[np.ndarray] = None
  test_groups: Optional[np.ndarray] = None
  group_names: Sequence[str] = ()

  def fingerprint(self):
    """SHA-256 of every array (shape, dtype and bytes) and the client groups, as hex.

    Identifies the data a run trained and evaluated on, wherever it was loaded
    from; a resume on other data is refused by comparing it.
    """
    digest = hashlib.sha256(f'{self.name}|{self.num_classes}|{self.task}'.encode())
    for array in (self.x_train, self.y_train, self.x_test, self.y_test, self.train_groups,
                  self.test_groups):
      if array is None:
        digest.update(b'none')
        continue
      array = np.ascontiguousarray(array)
      digest.update(f'{array.shape}|{array.dtype}'.encode())
      digest.update(memoryview(array).cast('B'))
    digest.update('|'.join(self.group_names).encode())
    return digest.hexdigest()

  @property
  def input_shape(self) -> Tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  @property
  def is_natural(self) -> bool:
    return self.train_groups is not None


def validate(data):
  """Returns `data` after checking what training relies on; one-line error naming the problem.

  Labels must be integers in `[0, num_classes)` (TFF otherwise fails deep in its
  runtime), image pixels finite, and the training labels must hold at least two
  classes.

  Raises:
    CorruptDataError: naming the data set, the split and the bad value.
  """
  for split, labels in (('training', data.y_train), ('test', data.y_test)):
    if labels.size == 0:
      continue
    if not np.issubdtype(labels.dtype, np.integer):
      raise CorruptDataError(f'{data.name}: {split} labels must be integers; got dtype '
                             f'{labels.dtype}.')
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= data.num_classes:
      raise CorruptDataError(f'{data.name}: {split} labels must be in [0, {data.num_classes}); '
                             f'found {low if low < 0 else high}.')
  for split, x in (('training', data.x_train), ('test', data.x_test)):
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
      bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
      raise CorruptDataError(f'{data.name}: {bad} {split} example(s) have non-finite (NaN or '
                             f'infinite) values.')
  classes = np.unique(data.y_train).size
  if classes < 2:
    raise CorruptDataError(f'{data.name}: the training labels hold {classes} class(es); a '
                           f'classifier needs at least 2.')
  return data


def require_file(path, what, hint):
  """Raises DataNotFoundError naming `path` and `hint` unless `path` is a file."""
  if not os.path.isfile(path):
    raise DataNotFoundError(f'{what} not found at {path}; {hint}.')
  return path


def write_npz(file, arrays):
  """`np.savez(file, **arrays)` into the open binary `file`, the archive closed even when a write
  fails (a full disk): numpy's own leaves it to the garbage collector, whose second failed write
  prints a `ZipFile.__del__` traceback. Readable by `np.load`."""
  with zipfile.ZipFile(file, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
    for name, value in arrays.items():
      with archive.open(f'{name}.npy', 'w', force_zip64=True) as member:
        np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
