"""Step gain of a factorised kernel and the `factor_lr_scale` reparametrisation."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from keras_layers import factor_init
from keras_layers import step_gain

CASES = [
    (lambda **kw: kl.FedParaDense(96, **kw), (None, 64)),
    (lambda **kw: kl.LowRankDense(96, **kw), (None, 64)),
    (lambda **kw: kl.PFedParaDense(96, **kw), (None, 64)),
    (lambda **kw: kl.FedParaConv2D(32, 3, **kw), (None, 6, 6, 16)),
    (lambda **kw: kl.LowRankConv2D(32, 3, **kw), (None, 6, 6, 16)),
]


def measured_gain(factorization, draws=6):
  """`sum_f ||d<J, W>/df||^2 / ||J||^2` averaged over random J, by autodiff."""
  values = []
  for seed in range(draws):
    j = tf.random.stateless_normal(factorization.kernel_shape, [seed, 1])
    with tf.GradientTape() as tape:
      inner = tf.reduce_sum(factorization.compose() * j)
    grads = tape.gradient(inner, list(factorization.factors.values()))
    values.append(sum(float(tf.reduce_sum(g * g)) for g in grads) / float(tf.reduce_sum(j * j)))
  return np.mean(values)


@pytest.mark.parametrize('make, shape', CASES)
def test_expected_gain_matches_autodiff_at_init(make, shape):
  tf.keras.utils.set_random_seed(3)
  layer = make(gamma=0.3)
  layer.build(shape)
  f = layer.factorization
  # Closed form from the factor stds: sum over factors of Var(W_i) / s_f^2, times the other term.
  assert measured_gain(f) == pytest.approx(f.initial_step_gain, rel=0.2)


def test_closed_form_of_one_fedpara_dense_term():
  # Matrix term with stds s_x, s_y and rank R: gain R (s_x^2 + s_y^2); FedPara weights each term by
  # the other term's variance R s_x^2 s_y^2.
  specs = factor_init.factor_specs('fedpara', (64, 96), 5)
  s = specs[0].stddev
  expected = 2 * (5 * (s**2 + s**2)) * (5 * s**2 * s**2)
  assert step_gain.step_gain('fedpara', specs, 5, tucker=False) == pytest.approx(expected)


@pytest.mark.parametrize('make, shape', CASES)
def test_matched_scale_gives_unit_gain_and_the_same_function(make, shape):
  tf.keras.utils.set_random_seed(4)
  plain = make(gamma=0.3)
  plain.build(shape)
  tf.keras.utils.set_random_seed(4)
  matched = make(gamma=0.3, factor_lr_scale='matched')
  matched.build(shape)
  f = matched.factorization
  assert f.lr_scale == pytest.approx(1.0 / f.initial_step_gain)
  # Same draws, so the same composed kernel; every factor gradient is scaled by sqrt(s), the gain by s.
  np.testing.assert_allclose(matched.composed_kernel(), plain.composed_kernel(), rtol=1e-5,
                             atol=1e-7)
  assert measured_gain(f) == pytest.approx(f.lr_scale * measured_gain(plain.factorization),
                                           rel=1e-4)
  assert measured_gain(f) == pytest.approx(1.0, rel=0.35)


def test_lr_scale_equals_sgd_at_a_scaled_learning_rate():
  """SGD at lr eta with factor_lr_scale s moves the effective factors as SGD at s*eta does."""
  x = tf.random.stateless_normal((16, 12), [1, 2])
  y = tf.random.stateless_normal((16, 8), [3, 4])
  scale, eta = 5.0, 0.01

  def run(layer, lr):
    layer.build((None, 12))
    return layer, lr

  tf.keras.utils.set_random_seed(7)
  base, _ = run(kl.FedParaDense(8, rank=3), eta)
  scaled = kl.FedParaDense(8, rank=3, factor_lr_scale=scale)
  scaled.build((None, 12))
  for name in base.factorization.factors:   # same effective factors
    scaled.factorization.assign_factor(name, base.factorization.factors[name].numpy())
  np.testing.assert_allclose(scaled.composed_kernel(), base.composed_kernel(), rtol=1e-6)
  for layer, lr in ((base, scale * eta), (scaled, eta)):
    for _ in range(3):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x) - y))
      grads = tape.gradient(loss, layer.trainable_weights)
      for v, g in zip(layer.trainable_weights, grads):
        if 'bias' not in v.name:
          v.assign_sub(lr * g)
  np.testing.assert_allclose(scaled.composed_kernel(), base.composed_kernel(), rtol=1e-4, atol=1e-6)


def test_config_round_trip_keeps_the_scale():
  layer = kl.FedParaConv2D(8, 3, gamma=0.5, factor_lr_scale='matched')
  clone = kl.FedParaConv2D.from_config(layer.get_config())
  assert clone.factor_lr_scale == 'matched'
  clone.build((None, 8, 8, 4))
  assert clone.factorization.lr_scale == pytest.approx(1.0 / clone.factorization.initial_step_gain)


@pytest.mark.parametrize('make', [lambda **kw: kl.FedParaDense(8, rank=3, **kw),
                                  lambda **kw: kl.LowRankDense(8, rank=3, **kw),
                                  lambda **kw: kl.FedParaDense(8, rank=3, factor_lr_scale=4.0,
                                                               **kw)])
def test_sign_step_gain_is_the_ratio_of_first_adam_steps(make):
  """One real Adam step on the factors lowers the loss G_sign times as much as on the kernel."""
  tf.keras.utils.set_random_seed(11)
  x = tf.random.stateless_normal((16, 12), [5, 6], dtype=tf.float64)
  y = tf.random.stateless_normal((16, 8), [7, 8], dtype=tf.float64)
  layer = make(dtype='float64')
  layer.build((None, 12))
  kernel = tf.Variable(layer.composed_kernel())
  factor_vars = list(layer.factorization.factors.values())
  plain_loss = lambda: tf.reduce_mean(tf.square(tf.matmul(x, kernel) + layer.bias - y))
  factored_loss = lambda: tf.reduce_mean(tf.square(layer(x) - y))

  def decrease(loss_fn, variables):
    before = float(loss_fn())
    with tf.GradientTape() as tape:
      value = loss_fn()
    grads = tape.gradient(value, variables)
    tf.keras.optimizers.Adam(learning_rate=1e-6, epsilon=1e-30).apply_gradients(
        zip(grads, variables))
    return before - float(loss_fn()), grads

  plain_drop, (j,) = decrease(plain_loss, [kernel])
  factor_drop, g = decrease(factored_loss, factor_vars)
  assert factor_drop / plain_drop == pytest.approx(step_gain.sign_step_gain(j, g), rel=1e-3)


def test_sign_step_gain_grows_with_the_square_root_of_the_lr_scale():
  x = tf.random.stateless_normal((16, 12), [1, 9])
  gains = []
  for scale in (None, 9.0):
    tf.keras.utils.set_random_seed(12)
    layer = kl.FedParaDense(8, rank=3, factor_lr_scale=scale)
    layer.build((None, 12))
    with tf.GradientTape() as tape:
      tape.watch(x)
      kernel = layer.composed_kernel()
      value = tf.reduce_sum(tf.sin(tf.matmul(x, kernel)))
    j, *g = tape.gradient(value, [kernel] + list(layer.factorization.factors.values()))
    gains.append(step_gain.sign_step_gain(j, g))
  assert gains[1] == pytest.approx(3.0 * gains[0], rel=1e-4)
