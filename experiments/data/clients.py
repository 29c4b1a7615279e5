"""Clients of a run: the partition (cached on disk under a key of everything that shapes
it) and its exposure as `tff.simulation.datasets.ClientData`."""

import collections
import dataclasses
import hashlib
import json
import os
import sys
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


def _checksum(key, arrays):
  """SHA-256 of the entry's key and its index arrays, in a fixed order: an entry renamed or
  relabelled for another key no longer matches."""
  digest = hashlib.sha256(str(key).encode())
  for name in ('train', 'train_offsets', 'test', 'test_offsets'):
    if name in arrays:
      digest.update(name.encode())
      digest.update(np.ascontiguousarray(arrays[name], dtype=np.int64).tobytes())
  return digest.hexdigest()


def _read_entry(path, spec, key, pool_size):
  """The partition stored at `path` if it is what `key` promises, else `(None, why not)`.

  An entry holds its key and a checksum of its arrays (written by `load_or_compute`); it must
  have `spec.clients` clients with indices into the pool of `pool_size` examples. Damaged,
  older or foreign entries are not used.
  """
  try:
    with np.load(path) as stored:
      arrays = {name: stored[name] for name in stored.files}
  except common.NPZ_READ_ERRORS:
    return None, 'damaged'
  if 'key' not in arrays or 'checksum' not in arrays:
    return None, 'written without a key and checksum (an older version)'
  if str(arrays['key']) != key:
    return None, f'made for another spec (key {str(arrays["key"])})'
  if str(arrays['checksum']) != _checksum(key, arrays):
    return None, 'its arrays do not match their checksum'
  train = _unpack(arrays['train'], arrays['train_offsets'])
  test = _unpack(arrays['test'], arrays['test_offsets']) if 'test' in arrays else None
  if len(train) != spec.clients:
    return None, f'it holds {len(train)} clients for {spec.clients}'
  indices = [arrays['train']] + ([arrays['test']] if test is not None else [])
  if any(len(a) and (a.min() < 0 or a.max() >= pool_size) for a in indices):
    return None, f'an index is outside the {pool_size} training examples'
  if (test is None) != (spec.client_test_fraction is None):
    return None, 'its held-out split does not match client_test_fraction'
  return Partition(train, test, key, True), None


def load_or_compute(spec, data, cache_dir=None):
  """The cached partition of `spec`, computed and stored atomically on a miss.

  A cache entry is used only when it is what its key promises (`_read_entry`); otherwise the
  partition is recomputed and the entry rewritten, with one line on stderr saying why.
  """
  key = spec.key(data.y_train)
  path = os.path.join(cache_dir or DEFAULT_CACHE_DIR, f'{spec.dataset}-{spec.kind}-{key}.npz')
  if os.path.exists(path):
    partition_, why = _read_entry(path, spec, key, len(data.y_train))
    if partition_ is not None:
      return partition_
    print(f'partition cache: {path} is not used ({why}); recomputing it.', file=sys.stderr,
          flush=True)
  train, test = compute(spec, data)
  arrays = dict(zip(('train', 'train_offsets'), _pack(train)))
  if test is not None:
    arrays.update(zip(('test', 'test_offsets'), _pack(test)))
  temporary = f'{path}.{os.getpid()}.tmp.npz'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(temporary, 'wb') as f:
      common.write_npz(f, dict(spec=np.asarray(json.dumps(dataclasses.asdict(spec))),
                               key=np.asarray(key), checksum=np.asarray(_checksum(key, arrays)),
                               **arrays))
    os.replace(temporary, path)
  except OSError as e:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise ValueError(f'the partition cache {os.path.dirname(path)} cannot be written '
                     f'({e.strerror}: {e.filename or path}); pass another --cache_dir.') from None
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
