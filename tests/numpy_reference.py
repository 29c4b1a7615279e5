"""Explicit numpy implementations of the formulas (docs/DESIGN.md) the tests compare against.

Written independently of `keras_layers.factors`: loops and `numpy.einsum` on the
paper's layout `W (out, in[, k1, k2])`, converted to Keras layout at the end.
"""

import numpy as np


def matrix_term(x, y):
  """`W = X Y^T`, paper layout `(out, in)`."""
  out, rank = x.shape
  w = np.zeros((out, y.shape[0]))
  for r in range(rank):
    w += np.outer(x[:, r], y[:, r])
  return w


def tucker_term(t, x, y):
  """`W[o, i, a, b] = sum_{p,q} T[p, q, a, b] X[o, p] Y[i, q]`, paper layout `(O, I, k...)`."""
  return np.einsum('pq...,op,iq->oi...', t, x, y)


def to_keras(w):
  """Paper layout `(out, in, k...)` -> Keras layout `(k..., in, out)`."""
  return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def combine(scheme, terms, nonlinearity=None):
  f = np.tanh if nonlinearity == 'tanh' else (lambda v: v)
  if scheme == 'lowrank':
    return f(terms[0])
  if scheme == 'fedpara':
    return f(terms[0]) * f(terms[1])
  return f(terms[0]) * (f(terms[1]) + 1.0)


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def lstm_step(x, h, c, kernel, recurrent_kernel, bias):
  """One LSTM step with Keras' gate order i, f, g, o (kernels in Keras layout)."""
  z = x @ kernel + h @ recurrent_kernel + bias
  i, f, g, o = np.split(z, 4, axis=-1)
  c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  h = sigmoid(o) * np.tanh(c)
  return h, c


def weight_normalize(v, g):
  """`W[:, j] = g_j v[:, j] / ||v[:, j]||` (Keras layout `(in, out)`), column by column."""
  w = np.zeros_like(v, dtype=np.float64)
  for j in range(v.shape[1]):
    w[:, j] = g[j] * v[:, j] / np.sqrt(np.sum(v[:, j] ** 2))
  return w


def fedpara_dense_safe_gradients(x1, y1, x2, y2, j):
  """The factors' gradients under `factor_lr_scale='safe'` for a FedPara dense kernel.

  Keras layout `W (in, out) = (Y1 X1^T) * (Y2 X2^T)` and `j = dL/dW`: the chain rule's `g`
  (by hand: `dL/dX1 = (J * W2)^T Y1`, `dL/dY1 = (J * W2) X1`, and the same for term 2), the
  kernel's first-order change along `g` by the product rule, `u`, then `||g||^2 / ||u||^2 g`.

  Returns:
    `[dL/dX1, dL/dY1, dL/dX2, dL/dY2]`, rescaled.
  """
  w1, w2 = y1 @ x1.T, y2 @ x2.T
  d1, d2 = j * w2, j * w1
  g = [d1.T @ y1, d1 @ x1, d2.T @ y2, d2 @ x2]
  u = (g[1] @ x1.T + y1 @ g[0].T) * w2 + w1 * (g[3] @ x2.T + y2 @ g[2].T)
  scale = sum(np.sum(gi * gi) for gi in g) / np.sum(u * u)
  return [scale * gi for gi in g]
