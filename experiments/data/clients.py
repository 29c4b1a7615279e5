"""Clients of a run: the partition (cached on disk under a key of everything that shapes
it) and its exposure as `tff.simulation.datasets.ClientData`."""

import collections
import dataclasses
import hashlib
import json
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


from experiments.data import common
from experiments.data import partition

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'fedpara_tff', 'partitions')


@dataclasses.dataclass(frozen=True)
class PartitionSpec:
  """Everything that changes which examples a client holds."""
  dataset: str
  kind: str
  clients: int
  seed: int
  alpha: Optional[float] = None
  shards_per_client: Optional[int] = None
  examples_per_client: Optional[int] = None
  client_test_fraction: Optional[float] = None  # set for personalised runs

  def key(self, labels):
    """A hex key of this spec and the pool it partitions (its size and label checksum)."""
    fields = dataclasses.asdict(self)
    if self.kind != 'dirichlet':
      fields['alpha'] = None
    if self.kind != 'shards':
      fields['shards_per_client'] = None
    if self.kind != 'sampled':
      fields.pop('examples_per_client')   # keys of specs written before it existed stay valid
    fields['pool'] = [int(len(labels)), hashlib.sha256(np.ascontiguousarray(labels)).hexdigest()]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


@dataclasses.dataclass
class Partition:
  """Per-client index arrays into the training pool; `test` only for personalised runs."""
  train: List[np.ndarray]
  test: Optional[List[np.ndarray]]
  key: str
  from_cache: bool = False


def compute(spec, data):
  """The partition of `data` (a `common.Dataset`) described by `spec`."""
  labels = data.y_train
  if spec.kind in ('dirichlet', 'shards') and data.task != 'image':
    raise ValueError(f'partition={spec.kind} splits by label; {spec.dataset} is a text task, '
                     f'use iid or natural.')
  if spec.kind == 'iid':
    parts = partition.iid(len(labels), spec.clients, spec.seed)
  elif spec.kind == 'dirichlet':
    parts = partition.dirichlet(labels, spec.clients, spec.alpha, spec.seed)
  elif spec.kind == 'shards':
    parts = partition.shards(labels, spec.clients, spec.shards_per_client, spec.seed)
  elif spec.kind == 'sampled':
    parts = partition.sampled(len(labels), spec.clients, spec.examples_per_client, spec.seed)
  elif spec.kind == 'natural':
    parts = partition.natural(data.train_groups, spec.clients, data.group_names)
  else:
    raise ValueError(f'partition must be one of {partition.KINDS}; got {spec.kind!r}.')
  if spec.client_test_fraction is None:
    return parts, None
  return partition.split_each(parts, spec.client_test_fraction, spec.seed + 1)


def _pack(parts):
  return np.concatenate(parts).astype(np.int64), np.cumsum([0] + [len(p) for p in parts])


def _unpack(values, offsets):
  return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def load_or_compute(spec, data, cache_dir=None):
  """The cached partition of `spec`, computed and stored atomically on a miss."""
  key = spec.key(data.y_train)
  path = os.path.join(cache_dir or DEFAULT_CACHE_DIR, f'{spec.dataset}-{spec.kind}-{key}.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as stored:
        test = _unpack(stored['test'], stored['test_offsets']) if 'test' in stored else None
        return Partition(_unpack(stored['train'], stored['train_offsets']), test, key, True)
    except common.NPZ_READ_ERRORS:
      pass  # a damaged cache entry is recomputed and rewritten below
  train, test = compute(spec, data)
  arrays = dict(zip(('train', 'train_offsets'), _pack(train)))
  if test is not None:
    arrays.update(zip(('test', 'test_offsets'), _pack(test)))
  temporary = f'{path}.{os.getpid()}.tmp.npz'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(temporary, spec=json.dumps(dataclasses.asdict(spec)), **arrays)
    os.replace(temporary, path)
  except OSError as e:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise ValueError(f'the partition cache {os.path.dirname(path)} cannot be written '
                     f'({e.strerror}: {e.filename}); pass another --cache_dir.') from None
  return Partition(train, test, key, False)


def client_ids(count):
  """Stable client ids `client_0000`, ... (natural names are kept in the run's metadata)."""
  return [f'client_{i:04d}' for i in range(count)]


def to_client_data(x, y, parts):
  """`tff.simulation.datasets.ClientData` whose client i yields `OrderedDict(x=, y=)` of
  `parts[i]`, unbatched, in index order. Its dataset function is a pure TF function of
  the client id (so TFF can serialise it)."""
  ids = client_ids(len(parts))
  values, offsets = _pack(parts)
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)),
      default_value=-1)
  values, offsets = tf.constant(values), tf.constant(offsets, tf.int64)
  x, y = tf.constant(x), tf.constant(y)

  def dataset_fn(client_id):
    row = table.lookup(tf.convert_to_tensor(client_id, tf.string))
    members = values[offsets[row]:offsets[row + 1]]
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=tf.gather(x, members), y=tf.gather(y, members)))

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(ids, dataset_fn)
