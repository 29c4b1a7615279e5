"""Warm-start conversion (`convert(..., init='fit')`, keras_layers.warm_start): fit errors
against numpy's SVD and HOSVD, a converted model that keeps its outputs, refusals."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from keras_layers import factors
from keras_layers import warm_start


def _factorization(scheme, shape, rank):
  f = factors.KernelFactorization(scheme, shape, rank)
  f.add_to(tf.keras.layers.Layer())
  return f


def _svd_error(target, rank):
  s = np.linalg.svd(target, compute_uv=False)
  return float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s ** 2)))


def _hosvd_error(target, rank):
  """numpy's truncated HOSVD of a (k, k, I, O) kernel in its channel modes."""
  lead = lambda a: np.linalg.svd(a, full_matrices=False)[0][:, :rank]
  x = lead(np.moveaxis(target, -1, 0).reshape(target.shape[-1], -1))
  y = lead(np.moveaxis(target, -2, 0).reshape(target.shape[-2], -1))
  projected = np.einsum('abio,op,iq,jq,kp->abjk', target, x, y, y, x)
  return float(np.linalg.norm(projected - target) / np.linalg.norm(target))


RNG = np.random.default_rng(7)
DENSE = RNG.normal(size=(64, 48)) * 0.1


def test_lowrank_dense_fit_is_the_eckart_young_optimum():
  f = _factorization('lowrank', (64, 48), 6)
  assert warm_start.fit_kernel(f, DENSE) == pytest.approx(_svd_error(DENSE, 6), rel=1e-5)


def test_lowrank_conv_fit_is_at_least_the_truncated_hosvd():
  target = RNG.normal(size=(3, 3, 8, 12))
  f = _factorization('lowrank', (3, 3, 8, 12), 4)
  error = warm_start.fit_kernel(f, target)
  reference = _hosvd_error(target, 4)
  assert error <= reference + 1e-5
  assert error > 0.3   # a random kernel is far from Tucker rank (4, 4)


def test_fedpara_fit_beats_the_same_size_low_rank_optimum_on_a_random_kernel():
  # FedPara at rank 4 has the parameters of low-rank rank 8; its product reaches rank 16.
  f = _factorization('fedpara', (64, 48), 4)
  error = warm_start.fit_kernel(f, DENSE)
  assert error <= _svd_error(DENSE, 4)   # never worse than its closed-form start
  assert error < _svd_error(DENSE, 8)    # and here better than low-rank of its size
  composed = f.compose_unscaled().numpy()
  assert np.linalg.norm(composed - DENSE) / np.linalg.norm(DENSE) == pytest.approx(error, rel=1e-4)


def test_the_fit_is_deterministic():
  a, b = (_factorization('pfedpara', (20, 16), 3) for _ in range(2))
  # Four steps, not the default twenty: each step is deterministic or the first four are not.
  assert (warm_start.fit_kernel(a, DENSE[:20, :16], steps=4)
          == warm_start.fit_kernel(b, DENSE[:20, :16], steps=4))
  for name in a.factors:
    np.testing.assert_array_equal(a.factors[name].numpy(), b.factors[name].numpy())


def _trained_mlp():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 12)).astype(np.float32)
  y = (x @ rng.normal(size=(12, 3))).argmax(axis=1)
  model = tf.keras.Sequential([tf.keras.Input((12,)),
                               tf.keras.layers.Dense(10, activation='relu', name='fc1'),
                               tf.keras.layers.Dense(3, name='logits')])
  model.compile('adam', tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=5, verbose=0)
  return model, x


def test_a_full_rank_fit_keeps_the_models_outputs_and_copies_the_bias():
  model, x = _trained_mlp()
  twin = kl.convert(model, 'lowrank', rank=10, exclude=['logits'], init='fit')
  np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(twin.get_layer('fc1').bias.numpy(),
                                model.get_layer('fc1').bias.numpy())
  (error,) = kl.parameter_report(twin)[0].fit_errors
  assert error < 1e-5
  random = kl.convert(model, 'lowrank', rank=10, exclude=['logits'])
  assert kl.parameter_report(random)[0].fit_errors == ()
  assert np.abs(random(x).numpy() - model(x).numpy()).max() > 0.1   # today's default forgets


def test_the_lstm_fits_both_kernels(monkeypatch):
  # The pairing of kernels is under test, not the fit's depth (tested above): 4 steps are
  # plenty to beat the truncated SVD, from a start that composes it.
  monkeypatch.setattr(warm_start, 'FIT_STEPS', 4)
  model = tf.keras.Sequential([tf.keras.Input((5, 6)), tf.keras.layers.LSTM(8, name='lstm')])
  twin = kl.convert(model, 'fedpara', rank=3, init='fit')
  row = kl.parameter_report(twin)[0]
  assert len(row.fit_errors) == 2
  cell = model.get_layer('lstm').cell
  for factorization, kernel, error in zip(twin.get_layer('lstm').cell.factorizations,
                                          (cell.kernel, cell.recurrent_kernel), row.fit_errors):
    composed, target = factorization.compose_unscaled().numpy(), kernel.numpy()
    assert error == pytest.approx(np.linalg.norm(composed - target) / np.linalg.norm(target),
                                  rel=1e-4)
    assert error <= _svd_error(target.astype(np.float64), 3) + 1e-4
  assert 'fit error' in kl.format_parameter_report(twin)
  assert 'fit error' not in kl.format_parameter_report(kl.convert(model, 'fedpara', rank=3))


@pytest.mark.parametrize('options, message', [
    (dict(init='warm'), r"convert: init must be one of \('random', 'fit'\); got 'warm'"),
    (dict(init='fit', nonlinearity='tanh'), r"init='fit' fits the product of the factors; with "
                                            r"nonlinearity='tanh'"),
])
def test_what_fit_cannot_do_is_refused_in_one_line(options, message):
  model, _ = _trained_mlp()
  with pytest.raises(ValueError, match=message):
    kl.convert(model, 'fedpara', rank=2, exclude=['logits'], **options)


def test_weight_normalised_lstms_are_refused():
  model = tf.keras.Sequential([tf.keras.Input((5, 6)), kl.WeightNormLSTM(8, name='lstm')])
  with pytest.raises(ValueError, match=r"init='fit' does not fit weight-normalised kernels "
                                       r"\('lstm' is a WeightNormLSTM\)"):
    kl.convert(model, 'fedpara', rank=3, init='fit')


def test_the_evaluation_binary_refuses_a_bad_variant_in_one_line(tmp_path):
  import subprocess
  import sys
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.warm_start_eval',
                         f'--run={tmp_path}', '--variants=fedpara:0'], capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  assert ("warm_start_eval: error: variant 'fedpara:0': the rank must be a positive integer; "
          "got '0'.") in done.stderr
