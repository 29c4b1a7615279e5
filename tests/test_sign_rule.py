"""The step-size rule under Adam (`keras_layers.sign_rule`; docs/DESIGN.md, "Step-size rule under
Adam"): each `'safe'` kernel's Adam update divided by `||A||_inf`, the largest absolute row sum of
its Jacobian. Checked against explicit autodiff Jacobians for every layer kind, scheme and
nonlinearity, against a real small Adam step (no kernel entry moves further than the learning
rate, the first-order decrease is at most the plain step's), and against numpy Adam steps derived
by hand, on the layer and through the shared round.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import client_optimizer
import keras_layers as kl
from keras_layers import sign_rule
from tests.factor_cases import LAYERS
from tests.factor_cases import SCHEMES
from tests.factor_cases import factorizations as _factorizations
from tests.factor_cases import grads_and_kernel_grads as _grads_and_kernel_grads
from tests.factor_cases import jacobian_matrix as _jacobian
from tests.factor_cases import loss as _loss
from tests.factor_cases import pair as _pair


def _model(layer, inputs):
  return tf.keras.Sequential([tf.keras.Input(inputs.shape[1:], dtype=inputs.dtype), layer])


# Every layer kind and scheme; each scheme with and without tanh (on different kinds).
BOUND_CASES = [(k, s, 'tanh' if (i + j) % 2 else None)
               for i, k in enumerate(LAYERS) for j, s in enumerate(SCHEMES)]


@pytest.mark.parametrize('kind, scheme, nonlinearity', BOUND_CASES)
def test_the_bound_is_the_jacobians_largest_absolute_row_sum(kind, scheme, nonlinearity):
  (_, safe), _ = _pair(kind, scheme, nonlinearity, seed=11, dtype='float64')
  for factorization in _factorizations(safe):
    a = _jacobian(factorization)
    np.testing.assert_allclose(float(factorization.sign_step_bound()),
                               np.abs(a).sum(axis=1).max(), rtol=1e-10)


def test_the_bound_is_taken_over_the_stored_variables():
  # With factor_lr_scale=s the stored variables enter multiplied by sqrt(s): A grows by sqrt(s).
  make, shape = LAYERS['conv2d']
  layer = make('FedPara', rank=2, factor_lr_scale=4.0, dtype='float64')
  layer(tf.zeros(shape, 'float64'))
  a = _jacobian(layer.factorization)
  np.testing.assert_allclose(float(layer.factorization.sign_step_bound()),
                             np.abs(a).sum(axis=1).max(), rtol=1e-10)


def _kernels(layer):
  return [f.compose_unscaled().numpy().astype(np.float64) for f in _factorizations(layer)]


@pytest.mark.parametrize('kind, scheme', [(k, s) for k in LAYERS for s in SCHEMES])
def test_a_real_small_adam_step_obeys_the_bound(kind, scheme):
  (_, safe), inputs = _pair(kind, scheme, 'tanh' if kind == 'conv1d' else None, seed=5)
  model = _model(safe, inputs)
  variables = model.trainable_variables
  optimizer = client_optimizer.LocalOptimizer('adam', variables,
                                              update_scales=sign_rule.prepare(model, variables))
  grads, kernel_grads = _grads_and_kernel_grads(safe, inputs)
  grads = dict(zip([id(v) for f in _factorizations(safe) for v in f.factors.values()], grads))
  before = _kernels(safe)
  eta = 1e-4
  # Adam's first step moves every coordinate by eta against its gradient's sign (epsilon aside).
  optimizer.apply([grads.get(id(v), tf.zeros_like(v)) for v in variables], eta)
  for w0, w1, j in zip(before, _kernels(safe), kernel_grads):
    step = w1 - w0
    # No kernel entry moves further than the plain kernel's Adam step, eta (a second-order
    # term of order (eta / ||A||_inf)^2 aside) ...
    assert np.abs(step).max() <= eta * (1 + 1e-3)
    # ... so the first-order loss decrease is at most the plain step's eta ||J||_1, and positive.
    j = j.astype(np.float64)
    assert -(j * step).sum() <= eta * np.abs(j).sum() * (1 + 1e-3)
    assert -(j * step).sum() > 0
    # The bound is reached for some update direction (the test above: ||A||_inf exactly); this
    # step, along the gradient's signs, moves the kernel at least a little.
    assert np.abs(step).max() > 1e-3 * eta


def _numpy_bound(x, y):
  """`max_{i,o} ||y_i||_1 + ||x_o||_1`: the low-rank dense kernel's `||A||_inf`, by hand."""
  return np.abs(y).sum(1).max() + np.abs(x).sum(1).max()


def _numpy_adam(params, grads, m, v, t, lr, scales):
  step = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
  out = []
  for i, (p, g) in enumerate(zip(params, grads)):
    m[i] = 0.9 * m[i] + 0.1 * g
    v[i] = 0.999 * v[i] + 0.001 * g * g
    out.append(p - scales[i] * step * m[i] / (np.sqrt(v[i]) + 1e-7))
  return out


FEATURES, CLASSES, BATCH = 6, 4, 5
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32),
                               y=tf.TensorSpec([None], tf.int32))


def _lowrank_model():
  tf.keras.utils.set_random_seed(3)
  return tf.keras.Sequential([tf.keras.Input((FEATURES,)),
                              kl.LowRankDense(CLASSES, rank=2, factor_lr_scale='safe')])


def _numpy_epoch(params, features, labels, lr):
  """Cross-entropy of `softmax(features W + b)`, `W^T... = y x^T`; Adam with the rule per batch."""
  x, y, b = [p.astype(np.float64) for p in params]
  m = [np.zeros_like(p) for p in (x, y, b)]
  v = [np.zeros_like(p) for p in (x, y, b)]
  for t, start in enumerate(range(0, len(labels), BATCH), 1):
    fb, lb = features[start:start + BATCH].astype(np.float64), labels[start:start + BATCH]
    z = fb @ (y @ x.T) + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(lb)), lb] -= 1.0
    j = fb.T @ p / len(lb)                        # dL/dW, (in, out)
    grads = [j.T @ y, j @ x, p.mean(0)]           # dL/dx (out, R), dL/dy (in, R), dL/db
    scale = 1.0 / _numpy_bound(x, y)
    x, y, b = _numpy_adam([x, y, b], grads, m, v, t, lr, [scale, scale, 1.0])
  return [x, y, b]


def test_adam_steps_equal_the_hand_derived_numpy_steps_on_the_shared_round():
  """One client, server SGD at lr 1: the new weights are the client's Adam steps with the rule,
  its scale read again from the factors before every step."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(15, FEATURES)).astype(np.float32)
  labels = rng.integers(0, CLASSES, 15).astype(np.int32)
  model = _lowrank_model()
  assert [v.name.split('/')[-1].split(':')[0] for v in model.trainable_variables] == [
      'x', 'y', 'bias']
  initial = [v.numpy() for v in model.trainable_variables]
  driver = fedpara_tff.build_fedavg_driver(_lowrank_model, SPEC, client_learning_rate=0.05,
                                           client_optimizer='adam')
  state = driver.initialize(initial)
  data = tf.data.Dataset.from_tensor_slices(
      collections.OrderedDict(x=features, y=labels)).batch(BATCH)
  state, _ = driver.next(state, ['a'], [data])
  expected = _numpy_epoch(initial, features, labels, 0.05)
  for got, want in zip(state['global_weights'], expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The rule's scale is far from 1 here, so a round without it would not match.
  assert abs(_numpy_bound(*initial[:2]) - 1.0) > 0.2


def test_prepare_restores_the_chain_rule_gradient_and_changes_nothing_else():
  (plain, safe), inputs = _pair('conv2d', 'fedpara', None, seed=4, dtype='float64')

  def gradients(layer):
    with tf.GradientTape() as tape:
      loss = _loss(layer(inputs))
    return [g.numpy() for g in tape.gradient(loss, layer.trainable_variables)]

  projected = gradients(safe)
  model = _model(safe, inputs)
  assert sign_rule.prepare(model, model.trainable_variables) is not None
  chain_rule = gradients(safe)
  for p, c, want in zip(projected, chain_rule, gradients(plain)):
    np.testing.assert_allclose(c, want, rtol=1e-12)
  assert any(not np.allclose(p, c) for p, c in zip(projected, chain_rule))
  # The function and the variables (what travels) are those of the paper's layer.
  np.testing.assert_array_equal(plain(inputs).numpy(), safe(inputs).numpy())
  assert [v.shape for v in plain.weights] == [v.shape for v in safe.weights]


def test_only_safe_kernels_are_scaled():
  make, shape = LAYERS['dense']
  inputs = tf.zeros(shape)
  paper = _model(make('FedPara', rank=2), inputs)
  assert sign_rule.prepare(paper, paper.trainable_variables) is None
  safe = _model(make('FedPara', rank=2, factor_lr_scale='safe'), inputs)
  scales = sign_rule.prepare(safe, safe.trainable_variables)()
  bound = float(safe.layers[0].factorization.sign_step_bound())
  values = [float(s) for s in scales]
  assert values[:-1] == pytest.approx([1.0 / bound] * 4)
  assert values[-1] == 1.0   # the bias


def test_the_rule_needs_adam_and_the_shared_round():
  with pytest.raises(ValueError, match=r"update_scales \(the step-size rule under Adam\) needs "
                                       r"client_optimizer='adam'; got 'sgd'"):
    client_optimizer.LocalOptimizer('sgd', [], update_scales=lambda: [])
  model_fn = fedpara_tff.keras_model_fn_to_tff(_lowrank_model, SPEC)
  with pytest.raises(ValueError, match=r"factor_lr_scale='safe', whose rule under client Adam "
                                       r'scales the optimizer.s update, which TFF 0.87.s Adam '
                                       r'cannot; run it on fedpara_tff.build_fedavg_driver'):
    fedpara_tff.build_fedpara_process(model_fn, keras_model_fn=_lowrank_model,
                                      client_optimizer='adam')


def test_the_process_builds_the_keras_model_once_for_the_adam_check_and_the_mask():
  """It built one for the client-Adam check and another for the aggregator's travel mask."""
  def paper_model():
    return tf.keras.Sequential([tf.keras.Input((FEATURES,)), kl.LowRankDense(CLASSES, rank=2)])
  built = []
  def counted():
    built.append(None)
    return paper_model()
  fedpara_tff.build_fedpara_process(fedpara_tff.keras_model_fn_to_tff(paper_model, SPEC),
                                    keras_model_fn=counted, client_optimizer='adam')
  assert len(built) == 1


def test_the_binaries_take_the_rule_with_adam():
  """`--factor_lr_scale=safe --client_optimizer=adam` was refused before the Adam rule."""
  from experiments import run_config  # pylint: disable=g-import-not-at-top
  run_config.check(run_config.RunConfig('unused', client_optimizer='adam', factor_lr_scale='safe'))
