"""Small factorised layers of every kind and scheme, for the step-size rule tests
(`tests/test_step_rule.py`, `tests/test_sign_rule.py`): builders, a loss, explicit Jacobians."""

import numpy as np
import tensorflow as tf

import keras_layers as kl
from keras_layers import jacobian

LAYERS = {
    'dense': (lambda s, **kw: getattr(kl, f'{s}Dense')(5, **kw), (4, 6)),
    'conv1d': (lambda s, **kw: getattr(kl, f'{s}Conv1D')(4, 3, **kw), (2, 7, 3)),
    'conv2d': (lambda s, **kw: getattr(kl, f'{s}Conv2D')(4, 3, **kw), (2, 5, 5, 3)),
    'lstm': (lambda s, **kw: getattr(kl, f'{s}LSTM')(4, **kw), (3, 5, 3)),
}
SCHEMES = {'fedpara': 'FedPara', 'pfedpara': 'PFedPara', 'lowrank': 'LowRank'}
CASES = [(k, s, n) for k in LAYERS for s in SCHEMES for n in (None, 'tanh')]


def factorizations(layer):
  """The layer's `KernelFactorization`s (an LSTM's are its cell's)."""
  return layer.cell.factorizations if hasattr(layer, 'cell') else layer.factorizations


def loss(outputs):
  """A loss whose gradient is not isotropic or aligned with anything in particular."""
  return tf.reduce_sum(tf.sin(3.0 * outputs) + 0.5 * tf.square(outputs))


def pair(kind, scheme, nonlinearity, seed, dtype='float32'):
  """The same layer built twice from the same weights: paper parameterisation, then 'safe'."""
  make, shape = LAYERS[kind]
  inputs = tf.random.stateless_normal(shape, [seed, 0], dtype=dtype)
  layers = []
  for option in (None, 'safe'):
    layer = make(SCHEMES[scheme], rank=2, nonlinearity=nonlinearity, factor_lr_scale=option,
                 dtype=dtype)
    layer(inputs)
    layers.append(layer)
  layers[1].set_weights(layers[0].get_weights())
  return layers, inputs


def jacobian_matrix(factorization):
  """`A`, the full Jacobian of the raw composition, float64 `(kernel entries, factor entries)`."""
  variables = list(factorization.factors.values())
  with tf.GradientTape(persistent=True) as tape:
    w = factorization.compose_unscaled()
  return np.concatenate([tape.jacobian(w, v).numpy().reshape(w.shape.num_elements(), -1)
                         for v in variables], axis=1).astype(np.float64)


def grads_and_kernel_grads(layer, inputs):
  """`(the factors' gradients of `loss`, per kernel J = dL/dW as numpy)` for one call."""
  kernels = factorizations(layer)
  with jacobian.recording_kernels(kernels) as recorded:
    with tf.GradientTape() as tape:
      value = loss(layer(inputs))
  composed = [k for uses in recorded for k in uses]
  variables = [v for f in kernels for v in f.factors.values()]
  grads = tape.gradient(value, variables + composed)
  return grads[:len(variables)], [j.numpy() for j in grads[len(variables):]]
