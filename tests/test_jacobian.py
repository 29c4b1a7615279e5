"""Jacobian correction (paper Appendix B, eqs. 6-9) against an independent numpy evaluation."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl
from keras_layers import jacobian

ETA, LAM = 0.3, 1.7


def numpy_matrix_regularizer(x1, y1, x2, y2, j, eta, lam, tanh=False):
  """Eqs. (6)-(9) in the paper's layout: X_i (m, r), Y_i (n, r), W_i = X_i Y_i^T, J (m, n)."""
  f = np.tanh if tanh else (lambda v: v)
  df = (lambda v: 1.0 - np.tanh(v) ** 2) if tanh else (lambda v: np.ones_like(v))
  w1, w2 = x1 @ y1.T, x2 @ y2.T
  j_w1 = j * f(w2) * df(w1)                    # J_W1 = J_W * W2 (chain rule through f)
  j_w2 = j * f(w1) * df(w2)
  j_x1, j_y1 = j_w1 @ y1, j_w1.T @ x1          # J_Xi = J_Wi Y_i, J_Yi = J_Wi^T X_i
  j_x2, j_y2 = j_w2 @ y2, j_w2.T @ x2
  stepped = f((x1 - eta * j_x1) @ (y1 - eta * j_y1).T) * f((x2 - eta * j_x2) @ (y2 - eta * j_y2).T)
  target = f(w1) * f(w2) - eta * j
  return 0.5 * lam * np.sum((stepped - target) ** 2), (j_x1, j_y1, j_x2, j_y2)


def numpy_tucker_regularizer(factors, j, eta, lam):
  """The conv form: W_i[o, i, a, b] = sum T_i[p, q, a, b] X_i[o, p] Y_i[i, q]; J (O, I, k, k)."""
  def term(x, y, t):
    return np.einsum('pqab,op,iq->oiab', t, x, y)
  (x1, y1, t1), (x2, y2, t2) = factors
  w1, w2 = term(x1, y1, t1), term(x2, y2, t2)
  stepped = []
  for (x, y, t), j_w in (((x1, y1, t1), j * w2), ((x2, y2, t2), j * w1)):
    j_x = np.einsum('oiab,pqab,iq->op', j_w, t, y)
    j_y = np.einsum('oiab,pqab,op->iq', j_w, t, x)
    j_t = np.einsum('oiab,op,iq->pqab', j_w, x, y)
    stepped.append(term(x - eta * j_x, y - eta * j_y, t - eta * j_t))
  return 0.5 * lam * np.sum((stepped[0] * stepped[1] - (w1 * w2 - eta * j)) ** 2)


def dense_layer(tanh=False, scale=None):
  layer = kl.FedParaDense(5, rank=2, nonlinearity='tanh' if tanh else None, factor_lr_scale=scale)
  layer.build((None, 4))
  rng = np.random.default_rng(0)
  for name in ('x1', 'y1', 'x2', 'y2'):
    layer.factorization.assign_factor(name, rng.normal(0, 0.6, layer.factorization.factors[name].shape))
  return layer


@pytest.mark.parametrize('tanh', [False, True])
def test_matrix_regularizer_value_and_gradient(tanh):
  layer = dense_layer(tanh)
  f = layer.factorization
  values = {n: v.numpy().astype(np.float64) for n, v in f.factors.items()}
  j_paper = np.random.default_rng(1).normal(0, 1, (5, 4))      # J_W (out, in)
  expected, j_factors = numpy_matrix_regularizer(values['x1'], values['y1'], values['x2'],
                                                 values['y2'], j_paper, ETA, LAM, tanh)
  with tf.GradientTape() as tape:
    value = jacobian.regularizer(f, tf.constant(j_paper.T, tf.float32), ETA, LAM)
  assert float(value) == pytest.approx(expected, rel=1e-4)

  # The gradient: the same expression written in TF ops, J and J_F held constant.
  variables = [f.factors[n] for n in ('x1', 'y1', 'x2', 'y2')]
  act = tf.tanh if tanh else tf.identity
  consts = [tf.constant(v, tf.float32) for v in j_factors]
  with tf.GradientTape() as reference_tape:
    x1, y1, x2, y2 = variables
    stepped = (act(tf.matmul(x1 - ETA * consts[0], y1 - ETA * consts[1], transpose_b=True))
               * act(tf.matmul(x2 - ETA * consts[2], y2 - ETA * consts[3], transpose_b=True)))
    target = (act(tf.matmul(x1, y1, transpose_b=True)) * act(tf.matmul(x2, y2, transpose_b=True))
              - ETA * tf.constant(j_paper, tf.float32))
    reference = 0.5 * LAM * tf.reduce_sum(tf.square(stepped - target))
  ours = tape.gradient(value, variables)
  theirs = reference_tape.gradient(reference, variables)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_tucker_regularizer_value():
  layer = kl.FedParaConv2D(4, 3, rank=2)
  layer.build((None, 6, 6, 3))
  f = layer.factorization
  rng = np.random.default_rng(2)
  for name, v in f.factors.items():
    f.assign_factor(name, rng.normal(0, 0.5, v.shape))
  values = {n: v.numpy().astype(np.float64) for n, v in f.factors.items()}
  j_paper = rng.normal(0, 1, (4, 3, 3, 3))                      # (O, I, k1, k2)
  expected = numpy_tucker_regularizer(
      [(values['x1'], values['y1'], values['t1']), (values['x2'], values['y2'], values['t2'])],
      j_paper, ETA, LAM)
  j_keras = np.transpose(j_paper, (2, 3, 1, 0))
  assert float(jacobian.regularizer(f, tf.constant(j_keras, tf.float32), ETA, LAM)) == (
      pytest.approx(expected, rel=1e-4))


def test_regularizer_steps_the_stored_variables_under_an_lr_scale():
  # With factor_lr_scale s the effective factors are sqrt(s) * stored; one SGD step of size eta on
  # the stored variables is a step of s * eta on the effective ones.
  scale = 4.0
  plain, scaled = dense_layer(), dense_layer(scale=scale)
  j = tf.constant(np.random.default_rng(3).normal(0, 1, (4, 5)), tf.float32)
  np.testing.assert_allclose(scaled.composed_kernel(), plain.composed_kernel(), rtol=1e-5)
  # Compare with numpy at the effective step size s * eta (and the plain target W - eta J).
  f = scaled.factorization
  eff = {n: f.factor(n).numpy().astype(np.float64) for n in f.factors}
  w1, w2 = eff['x1'] @ eff['y1'].T, eff['x2'] @ eff['y2'].T
  jp = j.numpy().T.astype(np.float64)
  step = scale * ETA
  x1, y1 = eff['x1'] - step * (jp * w2) @ eff['y1'], eff['y1'] - step * (jp * w2).T @ eff['x1']
  x2, y2 = eff['x2'] - step * (jp * w1) @ eff['y2'], eff['y2'] - step * (jp * w1).T @ eff['x2']
  expected = 0.5 * LAM * np.sum(((x1 @ y1.T) * (x2 @ y2.T) - (w1 * w2 - ETA * jp)) ** 2)
  assert float(jacobian.regularizer(f, j, ETA, LAM)) == pytest.approx(expected, rel=1e-4)


def _tiny_model():
  tf.keras.utils.set_random_seed(5)
  return tf.keras.Sequential([tf.keras.Input((6, 6, 2)),
                              kl.FedParaConv2D(4, 3, rank=2, activation='relu'),
                              tf.keras.layers.Flatten(), kl.FedParaDense(3, rank=2)])


LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _check_adds_exactly(model, x, y, independent_penalty):
  """`loss_and_gradients` with lambda LAM returns the plain gradients plus the gradient of
  `independent_penalty()` (the regularizers with J_W derived by the caller), the same loss.

  Returns the names of the variables the penalty moves.
  """
  def objective_fn():
    logits = model(x)
    return LOSS(y, logits), logits

  variables = model.trainable_variables
  plain_loss, _, plain = jacobian.loss_and_gradients(model, objective_fn, variables, ETA, 0.0)
  corrected_loss, _, corrected = jacobian.loss_and_gradients(model, objective_fn, variables, ETA,
                                                             LAM)
  assert float(plain_loss) == pytest.approx(float(corrected_loss))
  with tf.GradientTape() as tape:
    penalty = independent_penalty()
  extra = tape.gradient(penalty, variables)
  for p, c, e in zip(plain, corrected, extra):
    np.testing.assert_allclose(c, p + (0 if e is None else e), rtol=1e-4, atol=1e-6)
  return {v.name for v, e in zip(variables, extra)
          if e is not None and float(tf.reduce_max(tf.abs(e))) > 0}


def test_loss_and_gradients_adds_exactly_the_regularizers_gradient():
  model = _tiny_model()
  x = tf.random.stateless_normal((8, 6, 6, 2), [0, 1])
  y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
  # Independent route to J_W: differentiate the loss with each composed kernel fed in as a constant.
  conv, dense = model.layers[0], model.layers[2]
  w_conv, w_dense = conv.composed_kernel(), dense.composed_kernel()
  with tf.GradientTape() as tape:
    tape.watch([w_conv, w_dense])
    h = tf.nn.relu(tf.nn.convolution(x, w_conv, padding='VALID') + conv.bias)
    value = LOSS(y, tf.matmul(tf.reshape(h, (8, -1)), w_dense) + dense.bias)
  j_conv, j_dense = tape.gradient(value, [w_conv, w_dense])
  moved = _check_adds_exactly(model, x, y, lambda: (
      jacobian.regularizer(conv.factorization, j_conv, ETA, LAM)
      + jacobian.regularizer(dense.factorization, j_dense, ETA, LAM)))
  assert moved


def _manual_lstm(x, cell, kernel, recurrent):
  """The weight-normalised LSTM of `cell` over `x (batch, T, in)` with the raw composed kernels
  given, written out here: column-normalised kernels `g V / ||V||`, gates i, f, g, o."""
  def norm(v, g):
    return v * g / tf.sqrt(tf.reduce_sum(v * v, axis=0) + 1e-12)
  k, u = norm(kernel, cell.kernel_g), norm(recurrent, cell.recurrent_g)
  h = c = tf.zeros((x.shape[0], cell.units))
  for t in range(x.shape[1]):
    z_i, z_f, z_g, z_o = tf.split(x[:, t] @ k + h @ u + cell.bias, 4, axis=-1)
    c = tf.sigmoid(z_f) * c + tf.sigmoid(z_i) * tf.tanh(z_g)
    h = tf.sigmoid(z_o) * tf.tanh(c)
  return h


def test_lstm_layers_are_corrected_on_both_kernels():
  """The correction on a weight-normalised FedPara LSTM: J_W of each raw composed kernel (before
  the normalisation) from a hand-written recurrence, the regularizers on both factorisations."""
  model = tf.keras.Sequential([tf.keras.Input((5, 3)),
                               kl.FedParaLSTM(4, rank=2, weight_norm=True, name='lstm'),
                               tf.keras.layers.Dense(3)])
  assert [label for label, _ in jacobian.corrected_factorizations(model)] == [
      'lstm/kernel', 'lstm/recurrent']
  x = tf.random.stateless_normal((6, 5, 3), [4, 5])
  y = tf.constant([0, 1, 2, 0, 1, 2])
  cell, head = model.layers[0].cell, model.layers[1]
  raw = [cell.kernel_factorization.compose(), cell.recurrent_factorization.compose()]
  with tf.GradientTape() as tape:
    tape.watch(raw)
    value = LOSS(y, _manual_lstm(x, cell, *raw) @ head.kernel + head.bias)
  j_kernel, j_recurrent = tape.gradient(value, raw)
  moved = _check_adds_exactly(model, x, y, lambda: (
      jacobian.regularizer(cell.kernel_factorization, j_kernel, ETA, LAM)
      + jacobian.regularizer(cell.recurrent_factorization, j_recurrent, ETA, LAM)))
  assert any('kernel_x1' in n for n in moved) and any('recurrent_x1' in n for n in moved)


def test_keras_fit_with_the_correction():
  model = kl.JacobianCorrectedModel(_tiny_model(), strength=1.0)
  model.compile(tf.keras.optimizers.SGD(0.05),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  x = tf.random.stateless_normal((16, 6, 6, 2), [2, 3])
  y = tf.constant([0, 1, 2, 0] * 4)
  history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
  assert history.history['loss'][-1] < history.history['loss'][0]


@pytest.mark.parametrize('make, message', [
    (lambda: kl.JacobianCorrectedModel(_tiny_model(), strength=0),
     'strength must be a positive number; got 0'),
    (lambda: kl.JacobianCorrectedModel(
        tf.keras.Sequential([tf.keras.Input((3, 2)),
                             tf.keras.layers.RNN(kl.FedParaLSTMCell(4, rank=2, name='c'))]), 1.0),
     "the factorised cell c \\(FedParaLSTMCell\\) runs outside the package's LSTM layers"),
])
def test_refusals(make, message):
  with pytest.raises(ValueError, match=message):
    make()
