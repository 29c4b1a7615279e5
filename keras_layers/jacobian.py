"""Jacobian correction regularization of the FedPara paper (Appendix B, eqs. 6-9).

For a factorised kernel `W(F)` (factors `F`, e.g. `X_i (m, R)`, `Y_i (n, R)`,
`W_i = X_i Y_i^T`, `W = W1 * W2`) and the loss gradient `J_W = dL/dW` of the
current batch, the factors' gradients follow by the chain rule
(`J_W1 = J_W * W2`, `J_Xi = J_Wi Y_i`, `J_Yi = J_Wi^T X_i`, ...). One SGD step
of size `eta` on the factors, `F' = F - eta J_F`, gives `W' = W(F')`; the
regularizer

    lambda / 2 * || W' - (W - eta J_W) ||^2

pulls the factorised step toward the step the plain kernel would take.
`J_W` and the factors' gradients `J_F` are held constant (stop-gradient); the
factors inside `W'` and `W` are not (docs/DESIGN.md, "Jacobian correction").
With `factor_lr_scale`, `F` are the stored variables (what SGD steps).

`loss_and_gradients` is the one training step that adds it: Keras `fit`
(`JacobianCorrectedModel`), the TFF client update and the in-process
TensorFlow backend all call it. It covers Dense and convolution layers and the
two kernels of the package's factorised LSTM layers (the paper uses it for CNNs
and lambda 0 for its LSTM runs; docs/DESIGN.md, "Jacobian correction").
"""

from typing import Any

import contextlib

from keras_layers import backend
from keras_layers import base
from keras_layers import lstm_cells
from keras_layers import validation
from keras_layers.backend import keras

# The correction differentiates with TensorFlow's GradientTape: Keras 2 (TensorFlow 2.14) only.
tf = None if backend.IS_KERAS_3 else backend.keras_tensorflow()


def regularizer(factorization, j_w, learning_rate, strength):
  """`strength / 2 * ||W(F - eta J_F) - (W(F) - eta J_W)||^2` for one kernel.

  Args:
    factorization: a `factors.KernelFactorization` with its variables created.
    j_w: `dL/dW`, shape of the kernel (Keras layout); held constant.
    learning_rate: the SGD step size `eta` (scalar).
    strength: `lambda` (scalar).

  Returns:
    A scalar tensor, differentiable with respect to the factor variables.
  """
  names = list(factorization.factors)
  variables = [factorization.factors[n] for n in names]
  j_w = tf.stop_gradient(tf.convert_to_tensor(j_w))
  with tf.GradientTape() as tape:
    inner = tf.reduce_sum(factorization.compose() * j_w)
  j_factors = tape.gradient(inner, variables)
  stepped = {n: v - learning_rate * tf.stop_gradient(g if g is not None else tf.zeros_like(v))
             for n, v, g in zip(names, variables, j_factors)}
  w_stepped = factorization.compose_with(stepped)
  w_plain_step = factorization.compose() - learning_rate * j_w
  return 0.5 * strength * tf.reduce_sum(tf.square(w_stepped - w_plain_step))


def corrected_factorizations(model):
  """The kernel factorisations the correction covers, as `(label, factorization)` pairs.

  Every factorised Dense and convolution layer of `model` gives one (`label`: the layer's
  name); every factorised LSTM layer gives two (`<layer>/kernel`, `<layer>/recurrent`). A
  factorised LSTM cell used outside the package's LSTM layers (e.g. in
  `tf.keras.layers.RNN`) composes its kernels at every time step and is refused.
  """
  pairs = []
  for layer in base.factorized_layers(model):
    if isinstance(layer, lstm_cells.FACTORIZED_CELLS):
      raise ValueError(f'Jacobian correction: the factorised cell {layer.name} '
                       f'({type(layer).__name__}) runs outside the package\'s LSTM layers; '
                       f'use FedParaLSTM / LowRankLSTM / PFedParaLSTM, which compose its '
                       f'kernels once per call.')
    pairs += layer.labelled_factorizations()
  return pairs


@contextlib.contextmanager
def recording_kernels(factorizations):
  """Within the block, the kernels composed from each factorisation in a `call` are collected.

  Yields a list aligned with `factorizations`: for each, the list of its kernel tensors.
  """
  recorded = [[] for _ in factorizations]
  for factorization, uses in zip(factorizations, recorded):
    base._KERNEL_RECORDERS[id(factorization)] = uses  # pylint: disable=protected-access
  try:
    yield recorded
  finally:
    for factorization in factorizations:
      base._KERNEL_RECORDERS.pop(id(factorization), None)  # pylint: disable=protected-access


def loss_and_gradients(model, objective_fn, variables, learning_rate, strength):
  """The objective and its gradients with the Jacobian correction added.

  Args:
    model: the Keras model `objective_fn` calls.
    objective_fn: no-argument function computing the scalar training
      objective (it must call `model`); returns `(objective, extra)` where
      `extra` is passed through (e.g. the logits).
    variables: the variables to differentiate (usually
      `model.trainable_variables`).
    learning_rate: the client SGD step size `eta`.
    strength: `lambda`; 0 gives the plain gradients.

  Returns:
    `(objective, extra, gradients)`; `objective` excludes the regularizer.
  """
  factorizations = [f for _, f in corrected_factorizations(model)] if strength else []
  with recording_kernels(factorizations) as recorded:
    with tf.GradientTape() as tape:
      objective, extra = objective_fn()
  kernels = [k for uses in recorded for k in uses]
  grads = tape.gradient(objective, list(variables) + kernels)
  grads, j_kernels = grads[:len(variables)], grads[len(variables):]
  if not factorizations:
    return objective, extra, grads
  with tf.GradientTape() as reg_tape:
    penalties = []
    position = 0
    for factorization, uses in zip(factorizations, recorded):
      if not uses:
        continue
      j_w = tf.add_n([j if j is not None else tf.zeros_like(k)
                      for j, k in zip(j_kernels[position:position + len(uses)], uses)])
      position += len(uses)
      penalties.append(regularizer(factorization, j_w, learning_rate, strength))
    penalty = tf.add_n(penalties) if penalties else tf.constant(0.0)
  reg_grads = reg_tape.gradient(penalty, list(variables))
  total = [g if r is None else (r if g is None else g + r) for g, r in zip(grads, reg_grads)]
  return objective, extra, total


class JacobianCorrectedModel(keras.Model):
  """Wraps a Keras model so that `fit` trains it with the Jacobian correction.

  The regularizer uses the optimizer's current learning rate as `eta` (the
  correction assumes plain SGD, as in the paper).

  Args:
    model: the Keras model with factorised Dense, convolution or LSTM layers.
    strength: `lambda` (> 0).
  """

  def __init__(self, model: Any, strength: float, **kwargs: Any):
    if backend.IS_KERAS_3:
      raise ValueError('JacobianCorrectedModel needs Keras 2 (tf.keras of TensorFlow 2.14, as '
                       'TFF uses); the installed Keras is 3.')
    super().__init__(**kwargs)
    if not validation.is_number(strength) or not strength > 0:
      raise ValueError(f'strength must be a positive number; got {strength!r}.')
    self.inner = model
    self.strength = float(strength)
    corrected_factorizations(model)

  def call(self, inputs, training=None):
    return self.inner(inputs, training=training)

  def train_step(self, data):
    x, y = data[0], data[1]

    def objective_fn():
      predictions = self(x, training=True)
      return self.compiled_loss(y, predictions, regularization_losses=self.losses), predictions

    learning_rate = self.optimizer.learning_rate
    if callable(learning_rate):
      learning_rate = learning_rate(self.optimizer.iterations)
    _, predictions, grads = loss_and_gradients(
        self, objective_fn, self.trainable_variables, learning_rate, self.strength)
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    self.compiled_metrics.update_state(y, predictions)
    return {m.name: m.result() for m in self.metrics}
