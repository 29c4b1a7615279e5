"""How closely a factorisation of a given rank can reproduce a trained kernel.

`fit_error` finds `min_F ||W(F) - T|| / ||T||` for the kernel `W(F)` of a
`keras_layers.factors.KernelFactorization` and a target kernel `T` (e.g. the
trained original model's), by Adam on the factors from the factorisation's own
initialisation, best of several starts. It measures what the parameter budget
can express of the kernels a model actually learns, apart from how fast
training gets there (docs/DESIGN.md, "Effective step size"). For a
weight-normalised layer only the columns' directions count: the fitted
kernel's columns are rescaled to the target's lengths before comparing.
`svd_error` is the closed-form optimum of the low-rank matrix case
(Eckart-Young), against which the fit is checked.
"""

import math

import numpy as np
import tensorflow as tf

import keras_layers
from keras_layers import weight_norm


def svd_error(target, rank):
  """`||T - T_rank|| / ||T||` for the best rank-`rank` approximation `T_rank` of matrix `T`."""
  s = np.linalg.svd(np.asarray(target, np.float64), compute_uv=False)
  return float(math.sqrt(np.sum(s[rank:] ** 2) / np.sum(s ** 2)))


def _relative_sq_error(factorization, stored, target, column_norms):
  kernel = factorization.compose_with(stored)
  if column_norms is not None:
    kernel = weight_norm.normalize(kernel, column_norms)
  return tf.reduce_sum(tf.square(kernel - target)) / tf.reduce_sum(tf.square(target))


def fit_error(factorization, target, weight_normalized=False, steps=3000, learning_rate=0.03,
              starts=3, seed=0):
  """Smallest relative error `||W(F) - T|| / ||T||` found over `starts` Adam fits.

  Args:
    factorization: a `KernelFactorization` (its variables are not touched).
    target: kernel `T` in Keras layout, the factorisation's `kernel_shape`.
    weight_normalized: compare column directions only (`(in, out)` kernels).
    steps: Adam steps per start; the learning rate decays 100x over them.
    learning_rate: the initial Adam learning rate.
    starts: independent initialisations (the factorisation's own init, seeded).
    seed: seed of the first start.
  """
  target = tf.constant(np.asarray(target, np.float32))
  if tuple(target.shape) != factorization.kernel_shape:
    raise ValueError(f'target shape {tuple(target.shape)} differs from the kernel shape '
                     f'{factorization.kernel_shape}.')
  norms = tf.sqrt(tf.reduce_sum(tf.square(target), axis=0)) if weight_normalized else None
  stored = {spec.name: tf.Variable(tf.zeros(spec.shape)) for spec in factorization.specs}
  variables = list(stored.values())
  schedule = tf.keras.optimizers.schedules.ExponentialDecay(learning_rate, steps, 0.01)
  optimizer = tf.keras.optimizers.Adam(schedule)
  optimizer.build(variables)

  @tf.function
  def train():
    for _ in tf.range(steps):
      with tf.GradientTape() as tape:
        loss = _relative_sq_error(factorization, stored, target, norms)
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  best = math.inf
  for start in range(starts):
    rng = np.random.default_rng(seed + start)
    for spec in factorization.specs:
      stored[spec.name].assign(rng.normal(0.0, spec.stddev / factorization.multiplier,
                                          spec.shape).astype(np.float32))
    for slot in optimizer.variables:   # a fresh Adam: moments and step count back to 0
      slot.assign(tf.zeros_like(slot))
    train()
    final = float(_relative_sq_error(factorization, stored, target, norms))
    best = min(best, math.sqrt(max(final, 0.0)))
  return best


def kernel_pairs(factorised, original):
  """`(layer, kernel name, factorization, weight_normalized, trained kernel)` per factorised
  kernel of `factorised` (`keras_layers.factorized_layers`), matched by layer name to the plain
  layers of `original` (an LSTM's kernels are `kernel` and `recurrent`)."""
  plain = {layer.name: getattr(layer, 'cell', layer) for layer in original.layers}
  pairs = []
  for layer in keras_layers.factorized_layers(factorised):
    target = plain[layer.name]
    # An LSTM layer's cell holds the weight normalisation; Dense and Conv have none.
    normalised = bool(getattr(getattr(layer, 'cell', None), 'weight_norm', False))
    for label, factorization in layer.labelled_factorizations():
      which = label.rsplit('/', 1)[1] if '/' in label else 'kernel'
      trained = (target.kernel.numpy() if label == layer.name
                 else _lstm_kernel(target, which))
      pairs.append((layer.name, which, factorization, normalised, trained))
  return pairs


def _lstm_kernel(cell, which):
  """The trained kernel of a plain LSTM cell: normalised for `WeightNormLSTMCell`."""
  if hasattr(cell, 'composed_kernel'):
    kernel = cell.composed_kernel() if which == 'kernel' else cell.composed_recurrent_kernel()
  else:
    kernel = cell.kernel if which == 'kernel' else cell.recurrent_kernel
  return kernel.numpy()
