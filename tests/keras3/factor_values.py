"""A factorised kernel's values read from its layer, and the kernel the numpy reference
composes from them (the any-Keras layer tests)."""

import numpy as np

from keras_layers import backend
from tests import numpy_reference as ref


def np64(value):
  return backend.to_numpy(value).astype(np.float64)


def factor(factorization, name):
  """A factor as it enters the product (stored value x the lr-scale multiplier)."""
  return np64(factorization.factors[name]) * factorization.multiplier


def suffixes(scheme):
  return {'fedpara': ('1', '2'), 'pfedpara': ('1', '2_local'), 'lowrank': ('',)}[scheme]


def kernel(factorization, scheme, nonlinearity=None):
  """The kernel from the layer's factor values, composed by the numpy reference."""
  terms = []
  for suffix in suffixes(scheme):
    x, y = factor(factorization, 'x' + suffix), factor(factorization, 'y' + suffix)
    if len(factorization.kernel_shape) > 2:
      terms.append(ref.to_keras(ref.tucker_term(factor(factorization, 't' + suffix), x, y)))
    else:
      terms.append(ref.to_keras(ref.matrix_term(x, y)))
  return ref.combine(scheme, terms, nonlinearity)


def randomized_then_reloaded(twin, path, rng):
  """`twin` with random trainable values, saved to `path` (a `.keras` file) and loaded back:
  the loaded model."""
  from keras_layers.backend import keras   # pylint: disable=g-import-not-at-top
  for v in twin.trainable_variables:
    v.assign(rng.normal(size=v.shape).astype(np.float32))
  twin.save(str(path))
  return keras.models.load_model(str(path))
