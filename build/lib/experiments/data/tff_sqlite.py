"""TFF 0.87's federated SQLite caches: FEMNIST, Shakespeare and CIFAR-100 by client.

FEMNIST is also read from the HDF5 files older TFF releases cached
(`fed_emnist_train.h5` / `fed_emnist_test.h5`: group `examples/<writer>` with
datasets `pixels` and `label`) when there is no SQLite file.

`tff.simulation.datasets.<name>.load_data(cache_dir=DIR)` reads
`DIR/<file>.sqlite` when it exists and otherwise downloads `<file>.sqlite.lzma`
from TFF's public bucket. We read the same file directly (tables `examples`
with `split_name, client_id, serialized_example_proto` and `client_metadata`),
loading only the clients a run uses. When the file is missing we call TFF's
own downloader only if asked to (`download=True`), since most machines running
our tests have no network; otherwise the error says which file to put where.
"""

import collections
import os
import socket
import sqlite3

import h5py
import numpy as np
import tensorflow as tf

from experiments.data import common
from experiments.data import plays
from experiments.data import text

BUCKET = 'https://storage.googleapis.com/tff-datasets-public'
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.tff')
DOWNLOAD_TIMEOUT_SECONDS = 30
H5_FILES = ('fed_emnist_train.h5', 'fed_emnist_test.h5')

# name -> (file, train split, test split)
SOURCES = {
    'femnist': ('emnist_all.sqlite', 'all_train', 'all_test'),
    'shakespeare_tff': ('shakespeare.sqlite', 'train', 'test'),
    'cifar100_tff': ('cifar100.sqlite', 'train', 'test'),
}
FEATURES = {
    'femnist': {'pixels': tf.io.FixedLenFeature((28, 28), tf.float32),
                'label': tf.io.FixedLenFeature((), tf.int64)},
    'shakespeare_tff': {'snippets': tf.io.FixedLenFeature((), tf.string)},
    'cifar100_tff': {'image': tf.io.FixedLenFeature((32, 32, 3), tf.int64),
                     'label': tf.io.FixedLenFeature((), tf.int64),
                     'coarse_label': tf.io.FixedLenFeature((), tf.int64)},
}


def database_path(name, cache_dir=None, download=False):
  """Path of the SQLite file of `name`, downloading it with TFF's downloader if asked."""
  file = SOURCES[name][0]
  cache_dir = cache_dir or DEFAULT_CACHE_DIR
  path = os.path.join(cache_dir, file)
  if os.path.isfile(path):
    return path
  if not download:
    raise common.DataNotFoundError(
        f'{name}: {path} not found; put {file} there (decompress {BUCKET}/{file}.lzma with '
        f'`unxz`), pass --data_dir=DIR holding it, or pass --download to let TFF fetch it.')
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  previous = socket.getdefaulttimeout()
  socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
  try:
    return tff.simulation.datasets.download.get_compressed_file(
        origin=f'{BUCKET}/{file}.lzma', cache_dir=cache_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise common.DataNotFoundError(f'{name}: downloading {BUCKET}/{file}.lzma into {cache_dir} '
                                   f'failed ({type(e).__name__}: {e}); put {file} there by '
                                   f'hand.') from None
  finally:
    socket.setdefaulttimeout(previous)


def _query(path, sql, args=()):
  try:
    connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
      return connection.execute(sql, args).fetchall()
    finally:
      connection.close()
  except sqlite3.DatabaseError as e:
    raise common.CorruptDataError(f'{path} is not a readable TFF SQLite cache: {e}') from e


def client_ids(path, split):
  """Sorted client ids of `split`, from the `client_metadata` table."""
  rows = _query(path, 'SELECT DISTINCT client_id FROM client_metadata WHERE split_name = ?',
                (split,))
  if not rows:
    raise common.CorruptDataError(f'{path} has no client of split {split!r}.')
  return sorted(r[0] for r in rows)


def _examples(path, split, ids):
  marks = ','.join('?' * len(ids))
  rows = _query(path, f'SELECT client_id, serialized_example_proto FROM examples WHERE '
                      f'split_name = ? AND client_id IN ({marks})', (split, *ids))
  position = {c: i for i, c in enumerate(ids)}
  rows.sort(key=lambda r: position[r[0]])  # stable: keeps each client's examples in order
  return [position[r[0]] for r in rows], [r[1] for r in rows]


def _parse(name, path, protos):
  try:
    parsed = tf.io.parse_example(tf.constant(protos, tf.string), FEATURES[name])
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    raise common.CorruptDataError(f'{path}: examples do not parse as {name} protos: '
                                  f'{str(e).splitlines()[0]}') from e
  return {k: v.numpy() for k, v in parsed.items()}


def _image_split(name, path, split, ids):
  groups, protos = _examples(path, split, ids)
  if not protos:
    raise common.CorruptDataError(f'{path}: no {split!r} example for the chosen clients.')
  features = _parse(name, path, protos)
  if name == 'femnist':
    # TFF's FEMNIST has 1.0 for background; invert so ink is bright, like MNIST.
    images = (1.0 - features['pixels'])[..., None].astype(np.float32)
  else:
    images = features['image'].astype(np.float32) / 255.0
  return images, features['label'].astype(np.int32), np.asarray(groups, np.int32)


def load_tff_sqlite(name, cache_dir=None, max_clients=None, download=False,
                    sequence_length=80, test_fraction=0.2):
  """A naturally federated `common.Dataset` from TFF's SQLite cache of `name`.

  Images (`femnist`, `cifar100_tff`): groups are the first `max_clients`
  clients of the train split (sorted ids); the test pool is the test split
  of the same clients. Text (`shakespeare_tff`): each client's train snippets
  are cut into sequences and split in time like the plays.
  """
  h5_train = os.path.join(cache_dir or DEFAULT_CACHE_DIR, H5_FILES[0])
  if name == 'femnist' and os.path.isfile(h5_train) and not os.path.isfile(
      os.path.join(cache_dir or DEFAULT_CACHE_DIR, SOURCES[name][0])):
    return load_femnist_h5(cache_dir or DEFAULT_CACHE_DIR, max_clients)
  path = database_path(name, cache_dir, download)
  _, train_split, test_split = SOURCES[name]
  ids = client_ids(path, train_split)[:max_clients or None]
  if name == 'shakespeare_tff':
    clients = []
    for position, protos in _grouped_snippets(path, train_split, ids):
      snippets = _parse(name, path, protos)['snippets']
      x, y = text.to_sequences(''.join(s.decode('utf-8', 'replace') for s in snippets),
                               sequence_length)
      if len(x) >= 2:
        clients.append((ids[position], x, y))
    if not clients:
      raise common.CorruptDataError(f'{path}: no client has two {sequence_length}-character '
                                    f'sequences.')
    return plays.from_client_sequences(name, clients, test_fraction)
  x_train, y_train, train_groups = _image_split(name, path, train_split, ids)
  all_test_ids = client_ids(path, test_split)
  in_test = set(all_test_ids)
  test_ids = [i for i in ids if i in in_test] or all_test_ids
  x_test, y_test, _ = _image_split(name, path, test_split, test_ids)
  num_classes = 62 if name == 'femnist' else 100
  return common.Dataset(name, x_train, y_train, x_test, y_test, num_classes,
                        train_groups=train_groups, test_groups=None, group_names=tuple(ids))


def _read_h5(path, ids=None):
  try:
    with h5py.File(path, 'r') as f:
      writers = sorted(f['examples']) if ids is None else ids
      parts = [(np.asarray(f['examples'][w]['pixels'], np.float32),
                np.asarray(f['examples'][w]['label'], np.int32)) for w in writers if
               w in f['examples']]
  except (OSError, KeyError) as e:
    raise common.CorruptDataError(f'{path} is not a readable TFF EMNIST HDF5 file: {e}') from e
  return writers, parts


def load_femnist_h5(directory, max_clients=None):
  """FEMNIST from the HDF5 files of older TFF releases (same arrays as the SQLite form)."""
  writers, train = _read_h5(os.path.join(directory, H5_FILES[0]))
  writers, train = writers[:max_clients or None], train[:max_clients or None]
  test_path = os.path.join(directory, H5_FILES[1])
  _, test = _read_h5(test_path, writers) if os.path.isfile(test_path) else (None, [])
  if not test:
    raise common.DataNotFoundError(f'{test_path} not found or holds none of the chosen writers; '
                                   f'put it next to {H5_FILES[0]}.')
  stack = lambda parts, k: np.concatenate([p[k] for p in parts])
  groups = np.concatenate([np.full(len(p[1]), i, np.int32) for i, p in enumerate(train)])
  return common.Dataset('femnist', (1.0 - stack(train, 0))[..., None], stack(train, 1),
                        (1.0 - stack(test, 0))[..., None], stack(test, 1), num_classes=62,
                        train_groups=groups, group_names=tuple(writers))


def _grouped_snippets(path, split, ids):
  groups, protos = _examples(path, split, ids)  # sorted by client position
  by_client = collections.defaultdict(list)
  for group, proto in zip(groups, protos):
    by_client[group].append(proto)
  return sorted(by_client.items())


def write_sqlite(path, name, clients):
  """Writes a TFF-schema SQLite file: `clients` maps `(split, client_id)` to a list of
  feature dicts (numpy values) of `name`'s form. For tests and tools."""
  connection = sqlite3.connect(path)
  connection.execute('CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, '
                     'serialized_example_proto BLOB NOT NULL)')
  connection.execute('CREATE TABLE client_metadata (client_id TEXT NOT NULL, '
                     'split_name TEXT NOT NULL, num_examples INTEGER NOT NULL)')
  for (split, client), examples in clients.items():
    for example in examples:
      connection.execute('INSERT INTO examples VALUES (?, ?, ?)',
                         (split, client, _to_proto(example).SerializeToString()))
    connection.execute('INSERT INTO client_metadata VALUES (?, ?, ?)',
                       (client, split, len(examples)))
  connection.commit()
  connection.close()


def _to_proto(example):
  feature = {}
  for key, value in example.items():
    value = np.asarray(value)
    if value.dtype.kind == 'f':
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=value.ravel()))
    elif value.dtype.kind in 'iu':
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=value.ravel()))
    else:
      feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.item()]))
  return tf.train.Example(features=tf.train.Features(feature=feature))
