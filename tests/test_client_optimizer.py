"""Client Adam on both rounds (the shared round and TFF's builders) against numpy Adam."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import client_optimizer

FEATURES, CLASSES, BATCH = 4, 3, 5
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def _linear():
  return tf.keras.Sequential([tf.keras.Input((FEATURES,)), tf.keras.layers.Dense(CLASSES)])


def _data(seed=0, n=15):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n).astype(
      np.int32)


def _dataset(x, y):
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)


def _numpy_adam_epoch(w, b, x, y, lr):
  """Mean cross-entropy of `softmax(x w + b)`, Adam (TFF / Keras form) over the batches."""
  m = [np.zeros_like(w), np.zeros_like(b)]
  v = [np.zeros_like(w), np.zeros_like(b)]
  w, b = w.astype(np.float64), b.astype(np.float64)
  for t, start in enumerate(range(0, len(y), BATCH), 1):
    xb, yb = x[start:start + BATCH].astype(np.float64), y[start:start + BATCH]
    z = xb @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(yb)), yb] -= 1.0
    grads = [xb.T @ p / len(yb), p.mean(0)]
    scale = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    params = [w, b]
    for i, g in enumerate(grads):
      m[i] = 0.9 * m[i] + 0.1 * g
      v[i] = 0.999 * v[i] + 0.001 * g * g
      params[i] = params[i] - scale * m[i] / (np.sqrt(v[i]) + 1e-7)
    w, b = params
  return w, b


def _initial():
  tf.keras.utils.set_random_seed(5)
  return [v.numpy() for v in _linear().trainable_variables]


@pytest.mark.parametrize('rounds', [1, 2])
def test_shared_round_adam_matches_numpy(rounds):
  """One client, server SGD at lr 1: the new weights are the client's Adam steps; the moments
  start from zero again in round 2."""
  x, y = _data()
  w, b = _initial()
  trainer = fedpara_tff.build_fedavg_driver(_linear, SPEC, client_learning_rate=0.05,
                                             client_optimizer='adam')
  state = trainer.initialize([w, b])
  for _ in range(rounds):
    state, _ = trainer.next(state, ['a'], [_dataset(x, y)])
    w, b = _numpy_adam_epoch(w, b, x, y, 0.05)
  np.testing.assert_allclose(state['global_weights'][0], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state['global_weights'][1], b, rtol=1e-4, atol=1e-5)


def test_tff_builder_adam_matches_numpy():
  x, y = _data(1)
  w, b = _initial()
  model_fn = fedpara_tff.keras_model_fn_to_tff(_linear, SPEC)
  process = fedpara_tff.build_fedpara_process(model_fn, algorithm='fedavg',
                                              client_learning_rate=0.05, client_optimizer='adam')
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights(
      trainable=[w, b], non_trainable=[]))
  state = process.next(state, [_dataset(x, y)]).state
  trained = process.get_model_weights(state).trainable
  w, b = _numpy_adam_epoch(w, b, x, y, 0.05)
  np.testing.assert_allclose(trained[0], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(trained[1], b, rtol=1e-4, atol=1e-5)


def test_bad_client_optimizer_settings_are_refused():
  with pytest.raises(ValueError, match=r"client_optimizer must be one of \('sgd', 'adam'\); "
                                       r"got 'rmsprop'"):
    fedpara_tff.build_fedavg_driver(_linear, SPEC, client_optimizer='rmsprop')
  with pytest.raises(ValueError, match=r'jacobian_correction=1.0 assumes an SGD client step'):
    fedpara_tff.build_fedavg_driver(_linear, SPEC, client_optimizer='adam',
                                     jacobian_correction=1.0)
  with pytest.raises(ValueError, match=r'client_momentum=0.9 applies to SGD'):
    client_optimizer.tff_optimizer('adam', 0.1, momentum=0.9)


def test_runner_refuses_adam_with_sgd_only_settings():
  from experiments import run_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"client_momentum=0.9 applies to SGD; got "
                                       r"client_optimizer='adam'"):
    run_config.check(run_config.RunConfig('unused', client_optimizer='adam', client_momentum=0.9))
  with pytest.raises(ValueError, match=r"client_optimizer must be one of"):
    run_config.check(run_config.RunConfig('unused', client_optimizer='lamb'))
  assert 'client_optimizer' not in run_config.RunConfig('unused').identity()
