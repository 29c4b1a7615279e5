"""The layers on whichever Keras is installed: Keras 2 (tf.keras, in the main suite) and Keras 3
(`make test-keras3`: the `keras` package on JAX). Only numpy and `keras_layers.backend` here, so
the same tests run on both; the expected numbers come from `tests/numpy_reference.py`."""

import importlib

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import backend
from keras_layers.backend import keras
from tests import numpy_reference as ref
from tests.keras3.factor_values import factor as _factor
from tests.keras3.factor_values import kernel as _kernel
from tests.keras3.factor_values import np64 as _np

RNG = np.random.default_rng(7)
SCHEMES = {'fedpara': (kl.FedParaDense, kl.FedParaConv2D, kl.FedParaConv1D, kl.FedParaLSTM),
           'pfedpara': (kl.PFedParaDense, kl.PFedParaConv2D, kl.PFedParaConv1D,
                        kl.PFedParaLSTM),
           'lowrank': (kl.LowRankDense, kl.LowRankConv2D, kl.LowRankConv1D, kl.LowRankLSTM)}


def test_the_backend_is_the_installed_keras():
  installed = importlib.import_module('keras').__version__
  assert backend.IS_KERAS_3 == installed.startswith('3.')
  assert (keras.__name__ == 'keras') == backend.IS_KERAS_3   # else tf.keras's module


@pytest.mark.parametrize('scheme', sorted(SCHEMES))
@pytest.mark.parametrize('nonlinearity', [None, 'tanh'])
def test_dense_equals_the_numpy_composition(scheme, nonlinearity):
  layer = SCHEMES[scheme][0](6, rank=3, nonlinearity=nonlinearity, activation='relu')
  x = RNG.normal(size=(4, 12)).astype(np.float32)
  got = _np(layer(x))
  kernel = _kernel(layer.factorization, scheme, nonlinearity)
  want = np.maximum(x @ kernel + _np(layer.bias), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Hand-counted parameters: 2R(in + out) (one term for low-rank, R' = 3) plus the bias.
  terms = 1 if scheme == 'lowrank' else 2
  assert layer.count_params() == terms * 3 * (12 + 6) + 6


@pytest.mark.parametrize('scheme', sorted(SCHEMES))
def test_convolutions_equal_a_plain_convolution_of_the_numpy_kernel(scheme):
  conv2d, conv1d = SCHEMES[scheme][1], SCHEMES[scheme][2]
  images = RNG.normal(size=(2, 7, 7, 3)).astype(np.float32)
  layer = conv2d(5, 3, rank=2, padding='same', strides=2)
  got = _np(layer(images))
  plain = keras.layers.Conv2D(5, 3, padding='same', strides=2)
  plain.build(images.shape)
  plain.set_weights([_kernel(layer.factorization, scheme), _np(layer.bias)])
  np.testing.assert_allclose(got, _np(plain(images)), rtol=1e-5, atol=1e-5)
  terms = 1 if scheme == 'lowrank' else 2
  assert layer.count_params() == terms * 2 * (5 + 3 + 2 * 3 * 3) + 5   # R(O + I + R k1 k2)

  signal = RNG.normal(size=(2, 9, 4)).astype(np.float32)
  layer = conv1d(6, 3, rank=2, padding='causal')
  plain = keras.layers.Conv1D(6, 3, padding='causal')
  got = _np(layer(signal))
  plain.build(signal.shape)
  plain.set_weights([_kernel(layer.factorization, scheme), _np(layer.bias)])
  np.testing.assert_allclose(got, _np(plain(signal)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scheme', sorted(SCHEMES))
@pytest.mark.parametrize('go_backwards', [False, True])
def test_lstm_equals_the_numpy_recurrence(scheme, go_backwards):
  layer = SCHEMES[scheme][3](5, rank=2, return_sequences=True, go_backwards=go_backwards)
  sequence = RNG.normal(size=(3, 6, 4)).astype(np.float32)
  got = _np(layer(sequence))
  cell = layer.cell
  kernel = _kernel(cell.kernel_factorization, scheme)
  recurrent = _kernel(cell.recurrent_factorization, scheme)
  h = c = np.zeros((3, 5))
  steps = range(5, -1, -1) if go_backwards else range(6)
  outputs = []
  for t in steps:
    h, c = ref.lstm_step(sequence[:, t], h, c, kernel, recurrent, _np(cell.bias))
    outputs.append(h)
  np.testing.assert_allclose(got, np.stack(outputs, axis=1), rtol=1e-5, atol=1e-5)
  # The cell inside Keras' own RNN layer computes the same last output.
  rnn = keras.layers.RNN(cell, go_backwards=go_backwards)
  np.testing.assert_allclose(_np(rnn(sequence)), outputs[-1], rtol=1e-5, atol=1e-5)


def test_weight_normalised_lstm_kernels_equal_numpy():
  layer = kl.FedParaLSTM(4, rank=2, weight_norm=True)
  layer(RNG.normal(size=(2, 3, 5)).astype(np.float32))
  cell = layer.cell
  want = ref.weight_normalize(_kernel(cell.kernel_factorization, 'fedpara'), _np(cell.kernel_g))
  np.testing.assert_allclose(_np(layer.composed_kernel()), want, rtol=1e-5, atol=1e-6)


def test_pfedpara_local_and_global_weights():
  layer = kl.PFedParaDense(6, rank=2)
  layer(np.zeros((1, 4), np.float32))
  assert len(layer.local_weights) == 2 and len(layer.global_weights) == 3
  local = {id(v) for v in layer.local_weights}
  assert not local & {id(v) for v in layer.global_weights}
  assert all('local' in v.name for v in layer.local_weights)


def _model():
  return keras.Sequential([
      keras.Input((6,)),
      kl.FedParaDense(8, rank=2, activation='relu', name='hidden',
                      kernel_regularizer=keras.regularizers.L2(0.01)),
      kl.LowRankDense(3, rank=2, name='logits'),
  ])


def test_kernel_regularizer_applies_to_the_composed_kernel():
  model = _model()
  model(np.zeros((2, 6), np.float32))
  kernel = _kernel(model.get_layer('hidden').factorization, 'fedpara')
  (loss,) = [_np(v) for v in model.losses]
  np.testing.assert_allclose(loss, 0.01 * np.sum(kernel ** 2), rtol=1e-5)


def test_fit_lowers_the_loss():
  model = _model()
  model.compile(keras.optimizers.SGD(0.1),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = RNG.normal(size=(64, 6)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) * 2
  history = model.fit(x, y, epochs=30, batch_size=16, verbose=0).history['loss']
  assert history[-1] < 0.6 * history[0]


def test_keras_file_round_trip_gives_the_same_outputs(tmp_path):
  model = _model()
  x = RNG.normal(size=(3, 6)).astype(np.float32)
  before = _np(model(x))
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(_np(loaded(x)), before)
  assert type(loaded.get_layer('hidden')) is kl.FedParaDense
  assert loaded.get_layer('hidden').get_config() == model.get_layer('hidden').get_config()


def test_convert_then_export_keeps_the_function():
  plain = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(6, 3, name='conv'),
                            keras.layers.Flatten(), keras.layers.Dense(4, name='logits')])
  converted = kl.convert(plain, 'fedpara', gamma=0.5, exclude=['logits'])
  assert type(converted.get_layer('conv')) is kl.FedParaConv2D
  assert type(converted.get_layer('logits')) is keras.layers.Dense
  exported = kl.export(converted)
  assert type(exported.get_layer('conv')) is keras.layers.Conv2D
  x = RNG.normal(size=(2, 5, 5, 2)).astype(np.float32)
  np.testing.assert_allclose(_np(exported(x)), _np(converted(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not backend.IS_KERAS_3, reason='Keras 2 runs the Jacobian correction')
def test_jacobian_correction_is_refused_on_keras_3_in_one_line():
  with pytest.raises(ValueError, match='JacobianCorrectedModel needs Keras 2'):
    kl.JacobianCorrectedModel(_model(), 1.0)


def test_the_safe_step_rule_takes_the_hand_derived_sgd_step():
  """factor_lr_scale='safe' on this Keras (Keras 2, or Keras 3 on JAX / TensorFlow): one SGD step
  of `fit` moves the kernel, to first order, as the numpy rule does (docs/DESIGN.md, "Step-size
  rule"). Compared through the kernel's step `A d` (in float32 CGLS's rounding moves `d` itself
  along directions `A` barely sees), on a kernel large enough that 8 iterations stay far from
  exhausting the factors' directions (where float32 CGLS loses its accuracy)."""
  inputs = RNG.normal(size=(32, 16)).astype(np.float32)
  targets = RNG.normal(size=(32, 12)).astype(np.float32)
  layer = kl.FedParaDense(12, rank=2, use_bias=False, factor_lr_scale='safe', name='hidden')
  model = keras.Sequential([keras.Input((16,)), layer])
  names = ('x1', 'y1', 'x2', 'y2')
  before = [_factor(layer.factorization, n) for n in names]
  eta = 0.05
  model.compile(keras.optimizers.SGD(eta),
                lambda y, p: 0.5 * keras.ops.sum(keras.ops.square(p - y), axis=-1)
                if backend.IS_KERAS_3 else
                0.5 * backend.keras_tensorflow().reduce_sum((p - y) ** 2, axis=-1))
  model.fit(inputs, targets, batch_size=32, epochs=1, shuffle=False, verbose=0)
  # Keras averages the per-example loss over the batch: J = x^T (x W - t) / 32.
  x1, y1, x2, y2 = before
  w = ref.combine('fedpara', [ref.to_keras(ref.matrix_term(x1, y1)),
                              ref.to_keras(ref.matrix_term(x2, y2))])
  j = inputs.T.astype(np.float64) @ (inputs @ w - targets) / 32
  taken = [(value - _factor(layer.factorization, n)) / eta for n, value in zip(names, before)]
  want = ref.fedpara_dense_safe_gradients(*before, j, kl.factors.SAFE_STEPS)
  step = ref.fedpara_dense_kernel_step(*before, taken)
  np.testing.assert_allclose(step, ref.fedpara_dense_kernel_step(*before, want),
                             rtol=0, atol=1e-3 * np.linalg.norm(j))
  # The bound on this Keras: no longer than the plain step, no larger first-order decrease.
  assert np.linalg.norm(step) <= np.linalg.norm(j) * (1 + 1e-3)
  assert np.sum(j * step) <= np.sum(j * j) * (1 + 1e-3)


def _numeric_jacobian_inf_norm(factorization, scheme, nonlinearity):
  """`max_e sum_k |dW[e] / dF_k|` by central differences of the numpy composition (float64)."""
  values = {n: _factor(factorization, n) for n in factorization.factors}

  class Probe:   # what `_kernel` reads: factors and the kernel's shape
    kernel_shape = factorization.kernel_shape
    multiplier = 1.0
    factors = values

  rows = 0.0
  h = 1e-6
  for name, value in values.items():
    for index in np.ndindex(value.shape):
      original = value[index]
      value[index] = original + h
      up = _kernel(Probe, scheme, nonlinearity)
      value[index] = original - h
      down = _kernel(Probe, scheme, nonlinearity)
      value[index] = original
      rows = rows + np.abs(up - down) / (2 * h)
  return float(np.max(rows))


@pytest.mark.parametrize('scheme', sorted(SCHEMES))
@pytest.mark.parametrize('kind', [0, 1])
def test_the_sign_step_bound_is_the_numeric_jacobians_infinity_norm(scheme, kind):
  """The step-size rule under Adam on this Keras: `sign_step_bound` is `||A||_inf` of the kernel's
  Jacobian (docs/DESIGN.md, "Step-size rule under Adam"), and `sign_rule.prepare` scales the
  kernel's factors by its inverse and every other variable by 1."""
  layer = (SCHEMES[scheme][0](5, rank=2, factor_lr_scale='safe', nonlinearity='tanh')
           if kind == 0 else SCHEMES[scheme][1](4, 3, rank=2, factor_lr_scale='safe'))
  shape = (6,) if kind == 0 else (5, 5, 3)
  model = keras.Sequential([keras.Input(shape), layer])
  nonlinearity = 'tanh' if kind == 0 else None
  bound = float(_np(layer.factorization.sign_step_bound()))
  want = _numeric_jacobian_inf_norm(layer.factorization, scheme, nonlinearity)
  assert bound == pytest.approx(want, rel=1e-4)
  scales = [float(_np(s)) for s in kl.sign_rule.prepare(model, model.trainable_variables)()]
  assert scales == pytest.approx([1.0 / bound] * (len(scales) - 1) + [1.0], rel=1e-6)
