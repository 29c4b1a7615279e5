"""Tiny real-data federated set-up shared by the fedpara_tff tests."""

import collections
import os

import numpy as np
import tensorflow as tf

import fedpara_tff
from fedpara_tff import client_store
import keras_layers as kl
from experiments.data import mnist5k

FEATURES = 98  # every 8th pixel of the real MNIST digits: a tiny, fast model
BATCH = 10
ELEMENT_SPEC = collections.OrderedDict(
    x=tf.TensorSpec([None, FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))


def digits():
  """The real MNIST-5k digits (stored sorted by label), in a fixed shuffled order."""
  images, labels = mnist5k.load()
  order = np.random.default_rng(0).permutation(len(labels))
  return images.reshape(-1, 784)[order, ::8].astype(np.float32), labels[order]


def label_skewed_arrays(labels_per_client, size):
  """One client per label set: `size` digits whose labels are in that set."""
  x, y = digits()
  return [(x[np.isin(y, list(labels))][:size], y[np.isin(y, list(labels))][:size])
          for labels in labels_per_client]


def client_arrays(sizes, offset=0):
  """Consecutive slices of the real digits, one per client, of the given sizes."""
  x, y = digits()
  arrays, start = [], offset
  for size in sizes:
    arrays.append((x[start:start + size], y[start:start + size]))
    start += size
  return arrays


def to_dataset(x, y):
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)


def keras_model(parameterization='fedpara'):
  layers = {'fedpara': (kl.FedParaDense, kl.FedParaDense),
            'pfedpara': (kl.PFedParaDense, kl.PFedParaDense)}[parameterization]
  return tf.keras.Sequential([
      tf.keras.Input((FEATURES,)),
      layers[0](16, rank=3, activation='relu', name='hidden'),
      layers[1](10, rank=2, name='logits'),
  ])


# The adapter under test builds the tff.learning model_fn (test_personalization checks it alone).
model_fn = fedpara_tff.keras_model_fn_to_tff(keras_model, ELEMENT_SPEC)


# Trainable tensors of keras_model('fedpara'), by hand: hidden x1, y1, x2, y2 (16x3, 98x3), bias 16;
# logits x1, y1, x2, y2 (10x2, 16x2), bias 10.
FEDPARA_ELEMENTS = 2 * (16 * 3 + 98 * 3) + 16 + 2 * (10 * 2 + 16 * 2) + 10  # 814


def store_snapshot(run_dir):
  """`(committed round, {client: [arrays]})` of a run folder's SQLite client store."""
  store = client_store.SQLiteClientStore(os.path.join(run_dir, client_store.FILE_NAME), None)
  try:
    return store.committed_round(), store.snapshot()
  finally:
    store.close()
