"""Expected and measured step gain of a factorised kernel (docs/DESIGN.md, "Effective step size").

One SGD step of size `eta` on the factors lowers the loss, to first order, by
`eta * sum_f ||dL/df||^2`, where the plain kernel's step lowers it by `eta * ||dL/dW||^2`; their
ratio is the layer's step gain `G`. `step_gain` is its expected value at initialisation from the
factors' standard deviations (`keras_layers.factor_init`); `sign_step_gain` measures the Adam
(sign-step) analogue from gradients.
"""

import math

import numpy as np

from keras_layers.factor_init import term_count


_HERMITE_POINTS, _HERMITE_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)


def _gaussian_mean(fn, variance):
  """`E[fn(w)]` for `w ~ N(0, variance)` (Gauss-Hermite quadrature)."""
  values = fn(np.sqrt(variance) * _HERMITE_POINTS)
  return float(np.sum(_HERMITE_WEIGHTS * values) / np.sqrt(2.0 * np.pi))


def _moments(nonlinearity, variance):
  """`(E[f(w)^2], E[f'(w)^2])` for one term `w ~ N(0, variance)`."""
  if nonlinearity == 'tanh':
    return (_gaussian_mean(lambda w: np.tanh(w) ** 2, variance),
            _gaussian_mean(lambda w: (1.0 - np.tanh(w) ** 2) ** 2, variance))
  return variance, 1.0


def term_step_gain(stddevs, rank, tucker):
  """`E sum_f ||J_i df||^2 / E ||J_i||^2` for one term with isotropic `J_i`.

  A term is multilinear in its factors (`x`, `y` and, for Tucker-2, `t`), so
  the gradient of `<J_i, W_i>` w.r.t. factor `f` has total squared norm
  `||J_i||^2 Var(W_i) / s_f^2`, with `Var(W_i) = R s_x^2 s_y^2` (matrix) or
  `R^2 s_t^2 s_x^2 s_y^2` (Tucker-2).

  Args:
    stddevs: the standard deviation of each factor of the term.
    rank: inner rank R.
    tucker: whether the term has a core `t`.
  """
  variance = rank ** (2 if tucker else 1) * math.prod(s * s for s in stddevs)
  return variance * sum(1.0 / (s * s) for s in stddevs)


def sign_step_gain(kernel_grad, factor_grads):
  """Measured sign-step gain `G_sign = sum_f ||dL/df||_1 / ||dL/dW||_1`.

  Adam's first step (bias-corrected, negligible epsilon) moves every coordinate
  by the learning rate `eta` against its gradient's sign, lowering the loss, to
  first order, by `eta * ||g||_1`. `G_sign` is that decrease for a step on the
  factors over the decrease for the same step on the plain kernel: the
  sign-step analogue of the step gain `G` (docs/DESIGN.md, "Effective step
  size"). With `factor_lr_scale=s` the factors' gradients, and so `G_sign`,
  grow by `sqrt(s)`.

  Args:
    kernel_grad: `dL/dW`, the loss gradient with respect to the composed
      kernel (any array-like).
    factor_grads: the gradients with respect to the factor variables.
  """
  l1 = lambda t: float(np.sum(np.abs(np.asarray(t, dtype=np.float64))))
  return sum(l1(g) for g in factor_grads) / l1(kernel_grad)


def step_gain(scheme, specs, rank, tucker, nonlinearity=None):
  """Expected step gain `G` of a factorised kernel at its initial factor stds.

  `G = E sum_f ||dL/df||^2 / E ||dL/dW||^2` for a gradient `J = dL/dW` with
  independent entries: a plain kernel has `G = 1`; SGD at learning rate `eta`
  on the factors changes the loss, to first order, as SGD at `G * eta` on the
  plain kernel would. Through the scheme `J_i = J * f'(W_i) * (other term)`,
  so each term's gain is weighted by `E[f'(W_i)^2]` and the second moment of
  the other term (`E[f(W_j)^2]`; `E[(f(W_2) + 1)^2]` for pFedPara's global
  term, 1 for low-rank).

  Args:
    scheme: one of `SCHEMES`.
    specs: the factors' `FactorSpec`s, as `factor_specs` returns them.
    rank: inner rank R.
    tucker: whether the terms are Tucker-2 (convolution).
    nonlinearity: `None` or `'tanh'`.
  """
  per_term = len(specs) // term_count(scheme)
  terms = [specs[i * per_term:(i + 1) * per_term] for i in range(term_count(scheme))]
  gains, second, slope = [], [], []
  for term in terms:
    stds = [spec.stddev for spec in term]
    variance = rank ** (2 if tucker else 1) * math.prod(s * s for s in stds)
    f2, df2 = _moments(nonlinearity, variance)
    gains.append(term_step_gain(stds, rank, tucker))
    second.append(f2)
    slope.append(df2)
  if scheme == 'lowrank':
    return gains[0] * slope[0]
  other = [second[1], second[0]]
  if scheme == 'pfedpara':
    # W = f(W1) * (f(W2) + 1): E[(f(W2) + 1)^2] = E[f(W2)^2] + 1 (zero mean).
    other[0] = second[1] + 1.0
  return sum(g * d * o for g, d, o in zip(gains, slope, other))
