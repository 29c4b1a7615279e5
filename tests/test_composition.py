"""Composed kernels and layer outputs against explicit numpy formulas (docs/DESIGN.md)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from tests import numpy_reference as ref

DENSE = {'fedpara': kl.FedParaDense, 'pfedpara': kl.PFedParaDense, 'lowrank': kl.LowRankDense}
CONV2D = {'fedpara': kl.FedParaConv2D, 'pfedpara': kl.PFedParaConv2D, 'lowrank': kl.LowRankConv2D}
CONV1D = {'fedpara': kl.FedParaConv1D, 'pfedpara': kl.PFedParaConv1D, 'lowrank': kl.LowRankConv1D}
CELLS = {'fedpara': kl.FedParaLSTMCell, 'pfedpara': kl.PFedParaLSTMCell,
         'lowrank': kl.LowRankLSTMCell}
TERM_SUFFIXES = {'fedpara': ('1', '2'), 'pfedpara': ('1', '2_local'), 'lowrank': ('',)}


def randomize(layer, seed=0, scale=0.4):
  """Sets every weight to fresh random values (so init plays no part)."""
  rng = np.random.default_rng(seed)
  for v in layer.weights:
    v.assign(rng.normal(0.0, scale, v.shape).astype(np.float32))


def factor(layer, name):
  (match,) = [v for v in layer.weights if v.name.split('/')[-1] == f'{name}:0']
  return match.numpy().astype(np.float64)


def reference_kernel(layer, scheme, nonlinearity, prefix=''):
  terms = []
  for suffix in TERM_SUFFIXES[scheme]:
    x, y = factor(layer, prefix + 'x' + suffix), factor(layer, prefix + 'y' + suffix)
    if any(v.name.split('/')[-1].startswith(prefix + 't') for v in layer.weights):
      terms.append(ref.tucker_term(factor(layer, prefix + 't' + suffix), x, y))
    else:
      terms.append(ref.matrix_term(x, y))
  return ref.to_keras(ref.combine(scheme, terms, nonlinearity))


@pytest.mark.parametrize('scheme', sorted(DENSE))
@pytest.mark.parametrize('nonlinearity', [None, 'tanh'])
@pytest.mark.parametrize('fan_in, units, rank', [(12, 7, 3), (30, 40, 6), (5, 64, 5)])
def test_dense_kernel_and_output_match_explicit_formula(scheme, nonlinearity, fan_in, units, rank):
  layer = DENSE[scheme](units, rank=rank, nonlinearity=nonlinearity, activation='relu')
  x = np.random.default_rng(1).normal(size=(4, fan_in)).astype(np.float32)
  layer(x)
  randomize(layer)
  kernel = reference_kernel(layer, scheme, nonlinearity)
  np.testing.assert_allclose(layer.composed_kernel().numpy(), kernel, rtol=1e-5, atol=1e-5)
  expected = np.maximum(x @ kernel + layer.bias.numpy(), 0.0)
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('scheme', sorted(CONV2D))
@pytest.mark.parametrize('nonlinearity', [None, 'tanh'])
@pytest.mark.parametrize('kernel_size, channels, filters, rank', [
    ((3, 3), 4, 6, 2), ((1, 1), 8, 8, 3), ((5, 3), 3, 10, 3)])
def test_conv2d_kernel_matches_einsum_contraction(scheme, nonlinearity, kernel_size, channels,
                                                  filters, rank):
  layer = CONV2D[scheme](filters, kernel_size, rank=rank, nonlinearity=nonlinearity,
                         padding='same')
  layer(tf.zeros((1, 9, 9, channels)))
  randomize(layer)
  kernel = reference_kernel(layer, scheme, nonlinearity)
  assert kernel.shape == kernel_size + (channels, filters)
  np.testing.assert_allclose(layer.composed_kernel().numpy(), kernel, rtol=1e-5, atol=1e-5)


def test_conv2d_output_matches_numpy_convolution():
  layer = kl.FedParaConv2D(5, 3, rank=2, strides=2, padding='valid')
  x = np.random.default_rng(2).normal(size=(2, 7, 7, 3)).astype(np.float32)
  layer(x)
  randomize(layer)
  kernel = reference_kernel(layer, 'fedpara', None)
  expected = np.zeros((2, 3, 3, 5))
  for r in range(3):
    for c in range(3):
      patch = x[:, 2 * r:2 * r + 3, 2 * c:2 * c + 3, :]
      expected[:, r, c, :] = np.einsum('nabi,abio->no', patch, kernel)
  expected += layer.bias.numpy()
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('scheme', sorted(CONV1D))
def test_conv1d_kernel_matches_einsum_contraction(scheme):
  layer = CONV1D[scheme](6, 3, rank=2, padding='causal')
  out = layer(tf.zeros((1, 10, 4)))
  assert out.shape == (1, 10, 6)
  randomize(layer)
  np.testing.assert_allclose(layer.composed_kernel().numpy(),
                             reference_kernel(layer, scheme, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scheme', sorted(CELLS))
@pytest.mark.parametrize('nonlinearity', [None, 'tanh'])
def test_lstm_gates_match_numpy_recurrence(scheme, nonlinearity):
  units, features, steps = 6, 5, 4
  layer = {'fedpara': kl.FedParaLSTM, 'pfedpara': kl.PFedParaLSTM,
           'lowrank': kl.LowRankLSTM}[scheme](units, rank=3, nonlinearity=nonlinearity,
                                              return_sequences=True)
  x = np.random.default_rng(3).normal(size=(2, steps, features)).astype(np.float32)
  layer(x)
  randomize(layer.cell, scale=0.3)
  kernel = reference_kernel(layer.cell, scheme, nonlinearity, prefix='kernel_')
  recurrent = reference_kernel(layer.cell, scheme, nonlinearity, prefix='recurrent_')
  np.testing.assert_allclose(layer.composed_kernel().numpy(), kernel, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer.composed_recurrent_kernel().numpy(), recurrent,
                             rtol=1e-5, atol=1e-5)
  h = c = np.zeros((2, units))
  expected = []
  for t in range(steps):
    h, c = ref.lstm_step(x[:, t], h, c, kernel, recurrent, layer.cell.bias.numpy())
    expected.append(h)
  np.testing.assert_allclose(layer(x).numpy(), np.stack(expected, 1), rtol=1e-4, atol=1e-4)
  # The bare cell inside tf.keras.layers.RNN composes per step and agrees.
  rnn = tf.keras.layers.RNN(layer.cell, return_sequences=True)
  np.testing.assert_allclose(rnn(x).numpy(), np.stack(expected, 1), rtol=1e-4, atol=1e-4)


def test_pfedpara_with_zero_local_term_is_the_global_weight():
  layer = kl.PFedParaDense(9, rank=3)
  layer(tf.zeros((1, 11)))
  randomize(layer)
  for v in layer.local_weights:
    v.assign(tf.zeros_like(v))
  global_only = ref.to_keras(ref.matrix_term(factor(layer, 'x1'), factor(layer, 'y1')))
  np.testing.assert_allclose(layer.composed_kernel().numpy(), global_only, rtol=1e-5, atol=1e-6)


def float32_matrix_rank(kernel):
  """numpy's matrix_rank with the tolerance of float32 arithmetic."""
  kernel = np.asarray(kernel, np.float64)
  tol = np.linalg.svd(kernel, compute_uv=False).max() * max(kernel.shape) * np.finfo(np.float32).eps
  return np.linalg.matrix_rank(kernel, tol=tol)


@pytest.mark.parametrize('m, n', [(64, 64), (100, 49), (30, 90)])
def test_fedpara_reaches_full_rank_where_lowrank_is_capped(m, n):
  rank = kl.r_min((n, m))
  fedpara = kl.FedParaDense(m, rank=rank, use_bias=False)
  lowrank = kl.LowRankDense(m, rank=2 * rank, use_bias=False)
  for layer in (fedpara, lowrank):
    layer(tf.zeros((1, n)))
    randomize(layer)
  assert fedpara.count_params() == lowrank.count_params()
  assert float32_matrix_rank(fedpara.composed_kernel()) == min(m, n)
  assert float32_matrix_rank(lowrank.composed_kernel()) == 2 * rank
  assert 2 * rank < min(m, n)


def test_gradients_reach_every_factor():
  layers = [kl.FedParaDense(8, rank=2), kl.PFedParaConv2D(4, 3, rank=2, padding='same'),
            kl.FedParaLSTM(5, rank=2), kl.LowRankConv2D(4, 3, rank=2)]
  inputs = [tf.random.normal((3, 6)), tf.random.normal((2, 5, 5, 3)),
            tf.random.normal((2, 4, 3)), tf.random.normal((2, 5, 5, 3))]
  for layer, x in zip(layers, inputs):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer(x)))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert len(grads) == len(layer.trainable_variables) >= 3
    for v, g in zip(layer.trainable_variables, grads):
      assert g is not None, v.name
      assert float(tf.reduce_max(tf.abs(g))) > 0.0, v.name
