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


def fedpara_dense_kernel_step(x1, y1, x2, y2, t):
  """`A T`: the first-order change of `W (in, out) = (Y1 X1^T) * (Y2 X2^T)` along factor tangents
  `T = [tX1, tY1, tX2, tY2]` (product rule)."""
  w1, w2 = y1 @ x1.T, y2 @ x2.T
  tx1, ty1, tx2, ty2 = t
  return (ty1 @ x1.T + y1 @ tx1.T) * w2 + w1 * (ty2 @ x2.T + y2 @ tx2.T)


def fedpara_dense_safe_gradients(x1, y1, x2, y2, j, steps):
  """The factors' gradients under `factor_lr_scale='safe'` for a FedPara dense kernel.

  Keras layout `W (in, out) = (Y1 X1^T) * (Y2 X2^T)` and `j = dL/dW`. By hand: the chain rule
  `A^T C` (`dL/dX1 = (C * W2)^T Y1`, `dL/dY1 = (C * W2) X1`, the same for term 2) and the
  product rule `A T` (the kernel's first-order change along factor tangents `T`); then `steps`
  iterations of conjugate gradients on `A^T A d = A^T J` from `d = 0` (CGLS), and `d` times
  `(A^T J . d) / ||A d||^2`.

  Returns:
    `[dX1, dY1, dX2, dY2]`, the rule's gradient.
  """
  w1, w2 = y1 @ x1.T, y2 @ x2.T

  def a_t(c):
    d1, d2 = c * w2, c * w1
    return [d1.T @ y1, d1 @ x1, d2.T @ y2, d2 @ x2]

  def a(t):
    return fedpara_dense_kernel_step(x1, y1, x2, y2, t)

  d = [np.zeros_like(v) for v in (x1, y1, x2, y2)]
  r = j.copy()
  s = a_t(r)
  p = [v.copy() for v in s]
  gamma = sum(np.sum(v * v) for v in s)
  for _ in range(steps):
    q = a(p)
    alpha = gamma / np.sum(q * q)
    d = [dv + alpha * pv for dv, pv in zip(d, p)]
    r = r - alpha * q
    s = a_t(r)
    gamma_next = sum(np.sum(v * v) for v in s)
    p = [sv + gamma_next / gamma * pv for sv, pv in zip(s, p)]
    gamma = gamma_next
  # Rescaled so that A d is the projection of J on its own line (1 in exact arithmetic).
  u = a(d)
  scale = sum(np.sum(gv * dv) for gv, dv in zip(a_t(j), d)) / np.sum(u * u)
  return [scale * dv for dv in d]
