"""The aggregation error (issue 40): what averaging the factors loses against averaging the
kernels, per factorised kernel, on both backends, against numpy from the clients' factors."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import in_process_round
import keras_layers as kl
from tests import numpy_reference as ref


def _dense(layer):
  return (lambda: tf.keras.Sequential([tf.keras.Input((6,)), layer(4, rank=2)]),
          collections.OrderedDict(x=tf.TensorSpec((None, 6), tf.float32),
                                  y=tf.TensorSpec((None,), tf.int32)))


def _conv():
  return (lambda: tf.keras.Sequential([
      tf.keras.Input((5, 5, 2)), kl.FedParaConv2D(3, 3, rank=2), tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(4)]),
          collections.OrderedDict(x=tf.TensorSpec((None, 5, 5, 2), tf.float32),
                                  y=tf.TensorSpec((None,), tf.int32)))


def _lstm():
  return (lambda: tf.keras.Sequential([
      tf.keras.Input((7,)), tf.keras.layers.Embedding(10, 4), kl.FedParaLSTM(6, rank=2),
      tf.keras.layers.Dense(10)]),
          collections.OrderedDict(x=tf.TensorSpec((None, 7), tf.float32),
                                  y=tf.TensorSpec((None,), tf.int32)))


CASES = {
    'fedpara_dense': (_dense(kl.FedParaDense), 1),
    'lowrank_dense': (_dense(kl.LowRankDense), 1),
    'pfedpara_dense': (_dense(kl.PFedParaDense), 1),
    'fedpara_conv': (_conv(), 1),
    'fedpara_lstm': (_lstm(), 2),   # its input and recurrent kernels
}


def _numpy_kernel(kernel_map, values):
  """The global kernel from factor values by name (numpy, paper layout, then Keras layout)."""
  factorization = kernel_map.factorization
  factors = {name: np.asarray(values[p], np.float64)
             for name, p in zip(kernel_map.names, kernel_map.positions)}

  def term(suffix):
    x, y = factors['x' + suffix], factors['y' + suffix]
    if 't' + suffix in factors:
      return ref.to_keras(ref.tucker_term(factors['t' + suffix], x, y))
    return ref.to_keras(ref.matrix_term(x, y))

  if factorization.scheme == 'fedpara':
    return ref.combine('fedpara', [term('1'), term('2')])
  return term('1' if factorization.scheme == 'pfedpara' else '')   # pFedPara: W1 only


def _numpy_errors(maps, x, uploads, weights):
  finite = [all(np.all(np.isfinite(u)) for u in upload) for upload in uploads]
  w = np.array([wi if f else 0.0 for wi, f in zip(weights, finite)], np.float64)
  w = w / w.sum()
  mean_update = [sum(wi * np.nan_to_num(upload[k]) for wi, upload in zip(w, uploads))
                 for k in range(len(x))]
  update, share = [], []
  for kernel_map in maps:
    mean = sum(wi * _numpy_kernel(kernel_map, [xk - np.nan_to_num(uk) for xk, uk in
                                               zip(x, upload)])
               for wi, upload in zip(w, uploads))
    lost = np.linalg.norm(mean - _numpy_kernel(kernel_map, [xk - uk for xk, uk in
                                                           zip(x, mean_update)]))
    update.append(lost / np.linalg.norm(mean - _numpy_kernel(kernel_map, x)))
    share.append(lost / np.linalg.norm(mean))
  return np.array(update), np.array(share)


@pytest.mark.parametrize('case', sorted(CASES))
def test_the_error_equals_numpy_from_the_clients_factors_on_both_backends(case):
  (keras_model_fn, spec), kernels = CASES[case]
  build = (fedpara_tff.build_pfedpara_driver if case.startswith('pfedpara')
           else fedpara_tff.build_fedavg_driver)
  driver = build(keras_model_fn, spec)
  round_ = driver.round
  maps = round_.layout.kernels
  assert len(maps) == kernels
  rng = np.random.default_rng(5)
  x = [rng.normal(scale=0.5, size=s.shape).astype(np.float32) for s in round_.layout.global_specs]
  uploads = [[rng.normal(scale=0.2, size=s.shape).astype(np.float32)
              for s in round_.layout.global_specs] for _ in range(4)]
  uploads[3][0][...] = np.nan   # a diverged client: left out of both means
  weights = [np.float32(w) for w in (1.0, 2.0, 3.0, 4.0)]
  state = round_.initialize()
  state['global_weights'] = x
  sums = [[np.float32(1)] * 4, [np.float32(1)] * 4, [np.float32(0)] * 4, [0, 0, 0, 1]]
  expected_update, expected_share = _numpy_errors(maps, x, uploads, weights)
  assert np.all(expected_update > 1e-3)   # the check has something to see
  for finish_round in (round_.finish_round, in_process_round.InProcessRound(round_).finish_round):
    _, metrics = finish_round(state, uploads, weights, *sums)
    got = metrics['aggregation_error']
    np.testing.assert_allclose(got['update_share'], expected_update, rtol=2e-4)
    np.testing.assert_allclose(got['kernel_share'], expected_share, rtol=2e-4)


def test_the_error_is_zero_when_the_clients_agree_and_absent_without_factorised_kernels():
  (keras_model_fn, spec), _ = CASES['fedpara_dense']
  round_ = fedpara_tff.build_fedavg_driver(keras_model_fn, spec).round
  rng = np.random.default_rng(1)
  x = [rng.normal(size=s.shape).astype(np.float32) for s in round_.layout.global_specs]
  same = [rng.normal(scale=0.1, size=s.shape).astype(np.float32)
          for s in round_.layout.global_specs]
  state = round_.initialize()
  state['global_weights'] = x
  sums = [[np.float32(1)] * 2, [np.float32(1)] * 2, [np.float32(0)] * 2, [0, 0]]
  _, metrics = in_process_round.InProcessRound(round_).finish_round(
      state, [same, same], [np.float32(1), np.float32(3)], *sums)
  np.testing.assert_allclose(metrics['aggregation_error']['update_share'], [0.0], atol=1e-6)
  plain = fedpara_tff.build_fedavg_driver(
      lambda: tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(4)]), spec).round
  assert plain.layout.kernels == []
  _, metrics = plain.finish_round(plain.initialize(), [[np.ones((6, 4), np.float32),
                                                        np.ones(4, np.float32)]],
                                  [np.float32(1)], *[[v[0]] for v in sums])
  assert 'aggregation_error' not in metrics
