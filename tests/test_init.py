"""Initialisation: composed-kernel variance at init (docs/DESIGN.md, "Initialisation") and distinct terms."""

import numpy as np
import pytest

import keras_layers as kl
from keras_layers import backend


def glorot_variance(kernel_shape):
  receptive = int(np.prod(kernel_shape[:-2])) if len(kernel_shape) > 2 else 1
  return 2.0 / ((kernel_shape[-2] + kernel_shape[-1]) * receptive)


INITS = 8


def build(layer, kernel_shape):
  if len(kernel_shape) == 2:
    layer(np.zeros((1, kernel_shape[0]), np.float32))
  else:
    layer(np.zeros((1, 8, 8, kernel_shape[-2]), np.float32))
  return layer


CASES = [
    (lambda **kw: kl.FedParaDense(256, **kw), (512, 256)),
    (lambda **kw: kl.FedParaDense(400, **kw), (300, 400)),
    (lambda **kw: kl.PFedParaDense(256, **kw), (512, 256)),
    (lambda **kw: kl.LowRankDense(256, **kw), (512, 256)),
    (lambda **kw: kl.FedParaConv2D(128, 3, **kw), (3, 3, 64, 128)),
    (lambda **kw: kl.FedParaConv2D(256, 3, **kw), (3, 3, 256, 256)),
    (lambda **kw: kl.PFedParaConv2D(128, 3, **kw), (3, 3, 128, 128)),
    (lambda **kw: kl.LowRankConv2D(128, 3, **kw), (3, 3, 64, 128)),
]


@pytest.mark.parametrize('make, kernel_shape', CASES)
@pytest.mark.parametrize('gamma', [0.1, 0.5])
def test_composed_kernel_variance_matches_glorot_within_15_percent(make, kernel_shape, gamma):
  # Entries of one kernel share factors, so one draw's empirical variance
  # scatters by about +-20% around its expectation at small ranks; the mean over
  # independent initialisations estimates what the init guarantees.
  variances = [backend.to_numpy(build(make(gamma=gamma), kernel_shape).composed_kernel()).var()
               for _ in range(INITS)]
  ratio = np.mean(variances) / glorot_variance(kernel_shape)
  assert abs(ratio - 1.0) < 0.15, ratio


def test_matched_he_targets_two_over_fan_in():
  variances = [backend.to_numpy(build(kl.FedParaConv2D(128, 3, gamma=0.5, factor_init='matched_he'),
                                      (3, 3, 64, 128)).composed_kernel()).var()
               for _ in range(INITS)]
  ratio = np.mean(variances) / (2.0 / (9 * 64))
  assert abs(ratio - 1.0) < 0.15, ratio


@pytest.mark.parametrize('mode, fan_axis', [('he_fan_in', 'in'), ('he_fan_out', 'out')])
def test_per_factor_he_modes_draw_each_factor_on_its_fan(mode, fan_axis):
  layer = build(kl.FedParaDense(300, rank=20, factor_init=mode), (400, 300))
  x1 = backend.to_numpy(layer.factorization.factors['x1'])
  y1 = backend.to_numpy(layer.factorization.factors['y1'])
  # x (out, R) maps R -> out; y (in, R) maps in -> R.
  x_fan = 20 if fan_axis == 'in' else 300
  y_fan = 400 if fan_axis == 'in' else 20
  assert abs(x1.var() / (2.0 / x_fan) - 1.0) < 0.15
  assert abs(y1.var() / (2.0 / y_fan) - 1.0) < 0.15


@pytest.mark.parametrize('make, kernel_shape', CASES[:3] + CASES[4:7])
def test_hadamard_terms_differ_at_init(make, kernel_shape):
  layer = build(make(gamma=0.3), kernel_shape)
  w1, w2 = (backend.to_numpy(t) for t in layer.factorization.compose_terms())
  assert not np.allclose(w1, w2)
  assert np.corrcoef(w1.ravel(), w2.ravel())[0, 1] < 0.2
  # The kernel takes both signs (W = (XY^T)^2 could not).
  kernel = backend.to_numpy(layer.composed_kernel())
  assert (kernel < 0).mean() > 0.3 and (kernel > 0).mean() > 0.3
