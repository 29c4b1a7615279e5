"""fedpara_tff.update_transforms: each rule against its equations in numpy, and one rule for the
client and the server optimizer."""

import numpy as np
import pytest
import tensorflow as tf

from fedpara_tff import algorithms
from fedpara_tff import client_optimizer
from fedpara_tff import update_transforms

RNG = np.random.default_rng(3)
GRADS = [RNG.normal(size=(4, 3)) for _ in range(3)]


def _run(transform, learning_rate=0.1, scales=None):
  state = transform.init([tf.TensorSpec((4, 3), tf.float32)])
  steps = []
  for g in GRADS:
    step, state = transform.update([tf.constant(g, tf.float32)], state,
                                   tf.constant(learning_rate, tf.float32),
                                   scales)
    steps.append(step[0].numpy())
  return steps, state


def test_momentum_is_trace_then_the_learning_rate():
  steps, state = _run(update_transforms.build('sgd', momentum=0.5))
  a = np.zeros((4, 3))
  for g, step in zip(GRADS, steps):
    a = 0.5 * a + g
    np.testing.assert_allclose(step, 0.1 * a, rtol=1e-6)
  np.testing.assert_allclose(state[0], a, rtol=1e-6)


@pytest.mark.parametrize('yogi', [False, True])
def test_adam_and_yogi_against_their_equations(yogi):
  b1, b2, eps = 0.9, 0.99, 1e-3
  steps, state = _run(update_transforms.scale_by_adam(b1, b2, eps, yogi=yogi, initial_v=1e-6),
                      scales=[tf.constant(0.5, tf.float32)])
  m, v = np.zeros((4, 3)), np.full((4, 3), 1e-6)
  for t, (g, step) in enumerate(zip(GRADS, steps), start=1):
    m = b1 * m + (1 - b1) * g
    v = v + (1 - b2) * np.sign(g * g - v) * g * g if yogi else b2 * v + (1 - b2) * g * g
    expected = 0.5 * 0.1 * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(step, expected, rtol=2e-5)
  assert len(state) == 3 and float(state[2]) == 3.0


def test_adagrad_against_its_equations():
  steps, _ = _run(update_transforms.build('adagrad'))
  v = np.full((4, 3), 0.1)
  for g, step in zip(GRADS, steps):
    v = v + g * g
    np.testing.assert_allclose(step, 0.1 * g / np.sqrt(v + 1e-7), rtol=2e-5)


def test_chain_threads_each_transforms_state():
  both = update_transforms.chain(update_transforms.trace(0.5),
                                 update_transforms.scale_by_adam(0.9, 0.999, 1e-7))
  assert both.state_size(2) == 2 + 5
  steps, state = _run(both)
  traced, _ = _run(update_transforms.trace(0.5))   # the accumulated momentum, step by step
  adam = update_transforms.scale_by_adam(0.9, 0.999, 1e-7)
  adam_state = adam.init([tf.TensorSpec((4, 3), tf.float32)])
  for a, step in zip(traced, steps):
    expected, adam_state = adam.update([tf.constant(a, tf.float32)], adam_state,
                                       tf.constant(0.1, tf.float32))
    np.testing.assert_array_equal(step, expected[0].numpy())
  np.testing.assert_array_equal(state[0], traced[-1])


def test_the_client_and_the_server_take_the_same_adam_step_to_the_bit():
  grads = [[tf.constant(g, tf.float32)] for g in GRADS]
  start = np.ones((4, 3), np.float32)
  variable = tf.Variable(start)
  local = client_optimizer.LocalOptimizer('adam', [variable])
  server = algorithms.ServerOptimizer('adam', beta_2=client_optimizer.BETA_2)
  x, state = [tf.constant(start)], server.initial_state([tf.TensorSpec((4, 3), tf.float32)])
  for g in grads:
    local.apply(g, tf.constant(0.01))
    x, state = server.step(x, g, state, tf.constant(0.01))
  np.testing.assert_array_equal(variable.numpy(), x[0].numpy())
  local.reset()   # a new round starts Adam from zero
  local.apply(grads[0], tf.constant(0.01))
  np.testing.assert_allclose(variable.numpy() - x[0].numpy(),
                             -0.01 * np.sign(GRADS[0]).astype(np.float32), rtol=1e-3, atol=1e-6)
