"""What every loader returns, and the two errors loaders raise."""

import dataclasses
import os
from typing import Optional, Sequence, Tuple

import numpy as np


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

  @property
  def input_shape(self) -> Tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  @property
  def is_natural(self) -> bool:
    return self.train_groups is not None


def require_file(path, what, hint):
  """Raises DataNotFoundError naming `path` and `hint` unless `path` is a file."""
  if not os.path.isfile(path):
    raise DataNotFoundError(f'{what} not found at {path}; {hint}.')
  return path
