"""The factor math shared by every FedPara, pFedPara and low-rank layer.

One *term* is a low-rank kernel built from factors, in Keras kernel layout:

* matrix term (dense, LSTM): `x (out, R)`, `y (in, R)`; the kernel is
  `W^T = Y X^T`, shape `(in, out)` (the paper's `W = X Y^T` is `(out, in)`).
* Tucker-2 term (convolution, Proposition 3): `t (R, R, k1, ..., kd)`,
  `x (O, R)`, `y (I, R)`; `W[a, b, i, o] = sum_{p,q} t[p, q, a, b] x[o, p] y[i, q]`,
  shape `(k1, ..., kd, I, O)`. The first axis of `t` pairs with `x` (output
  channels) and the second with `y` (input channels), as in the authors'
  contraction "xyzw,xo,yi->oizw".

A *scheme* combines terms into the layer's kernel:

* `fedpara`: `W = f(W1) * f(W2)` (Hadamard product), both terms global.
* `pfedpara`: `W = f(W1) * (f(W2) + 1)`; `W1` global, `W2` local (its factors are
  named `x2_local`, `y2_local`, `t2_local` and never leave the client).
* `lowrank`: `W = W1`, one term of inner rank R (the conventional baseline).

`f` is the optional nonlinearity (`None` or `"tanh"`), applied to each term.

Step size of the composed kernel (docs/DESIGN.md, "Effective step size"): one
SGD step of size `eta` on the factors decreases the loss, to first order, by
`eta * sum_f ||dL/df||^2`, where the plain kernel's step decreases it by
`eta * ||dL/dW||^2`. Their ratio is the layer's *step gain* `G`; `keras_layers.step_gain`
gives its expected value at initialisation. A factorised layer trains like the
plain layer at learning rate `G * eta`. With `factor_lr_scale=s` every factor
is stored divided by `sqrt(s)` and multiplied back when composing, which under
SGD is the same as a learning rate `s` times larger on the factors (the
function at init is unchanged); `'matched'` picks `s = 1 / G`. `'safe'` instead
replaces the factors' gradient at every step by a few conjugate-gradient iterations
on the composition's Jacobian, which make the kernel's first-order step a projection
of the plain kernel's step (docs/DESIGN.md, "Step-size rule").
"""

import collections
import math

import numpy as np

from keras_layers import backend
from keras_layers import cgls
from keras_layers import factor_options
from keras_layers.backend import keras
from keras_layers.backend import ops
from keras_layers.factor_init import GLOBAL
from keras_layers.factor_init import LOCAL
from keras_layers.factor_init import factor_specs
from keras_layers.factor_init import term_count
from keras_layers.factor_init import term_suffix
from keras_layers.step_gain import step_gain

# The options (`factor_options`), by their names here too.
SCHEMES = factor_options.SCHEMES
NONLINEARITIES = factor_options.NONLINEARITIES
FACTOR_INITS = factor_options.FACTOR_INITS
MATCHED = factor_options.MATCHED
SAFE = factor_options.SAFE
check_scheme = factor_options.check_scheme
check_nonlinearity = factor_options.check_nonlinearity
check_factor_init = factor_options.check_factor_init
check_factor_lr_scale = factor_options.check_factor_lr_scale
# CGLS iterations of the 'safe' rule (docs/DESIGN.md, "Step-size rule"): each adds directions to
# the subspace the plain step is projected on, at one more forward- and reverse-mode derivative
# of the composition per backward pass.
SAFE_STEPS = 8


# ---------------------------------------------------------------------------
# Composition (pure functions of tensors).


def compose_matrix_terms(x, y):
  """Returns `Y_b X_b^T`, shape `(B, in, out)`, from `x (B, out, R)` and `y (B, in, R)`."""
  return backend.matmul_transpose_b(y, x)


def compose_tucker_terms(t, x, y):
  """Returns B Tucker-2 kernels, shape `(B, k1, ..., kd, I, O)`.

  Computes `W[b, k, i, o] = sum_{p,q} t[b, p, q, k] x[b, o, p] y[b, i, q]` as two
  batched matrix products that land directly in Keras layout: first
  `A[b, k, i, p] = sum_q y[b, i, q] t[b, p, q, k]` (one small product per spatial
  position k), then `W[b, k, i, :] = A[b, k, i, :] X_b^T` (one large GEMM per term).

  Args:
    t: cores, shape `(B, R, R, k1, ..., kd)`.
    x: output-channel factors, shape `(B, O, R)`.
    y: input-channel factors, shape `(B, I, R)`.
  """
  terms, rank_p, rank_q = t.shape[0], t.shape[1], t.shape[2]
  spatial = list(t.shape[3:])
  fan_in, fan_out = y.shape[1], x.shape[1]
  n = len(spatial)
  # (B, R_p, R_q, k...) -> (B, K, R_q, R_p)
  t_k = ops.reshape(ops.transpose(t, [0] + list(range(3, n + 3)) + [2, 1]),
                    [terms, -1, rank_q, rank_p])
  a = ops.matmul(ops.expand_dims(y, 1), t_k)                                    # (B, K, I, R_p)
  w = backend.matmul_transpose_b(ops.reshape(a, [terms, -1, rank_p]), x)        # (B, K*I, O)
  return ops.reshape(w, [terms] + spatial + [fan_in, fan_out])


def compose_terms(term_factors):
  """Composes every term at once from per-term `(x, y)` or `(x, y, t)` lists.

  The terms share their shapes, so their factors are stacked and composed
  with batched products (one pass instead of one per term).

  Returns:
    A list with one kernel per term, Keras layout.
  """
  stacked = [backend.stack(list(same_kind)) for same_kind in zip(*term_factors)]
  if len(stacked) == 2:
    composed = compose_matrix_terms(*stacked)
  else:
    x, y, t = stacked
    composed = compose_tucker_terms(t, x, y)
  return ops.unstack(composed, num=len(term_factors))


def _apply(nonlinearity, w):
  return ops.tanh(w) if nonlinearity == 'tanh' else w


def combine_terms(scheme, terms, nonlinearity=None):
  """Combines composed terms into the kernel according to `scheme`."""
  if scheme == 'lowrank':
    (w,) = terms
    return _apply(nonlinearity, w)
  w1, w2 = (_apply(nonlinearity, w) for w in terms)
  if scheme == 'fedpara':
    return w1 * w2
  return w1 * (w2 + ops.ones_like(w2))


# ---------------------------------------------------------------------------
# The sign-step bound: how far a kernel entry can move when every factor coordinate moves by at
# most 1 (the step-size rule under Adam, docs/DESIGN.md "Step-size rule under Adam").


def term_jacobian_row_sums(x, y, t=None):
  """`sum_k |dW[e] / df_k|` over every factor entry `f_k` of one term, for each kernel entry `e`.

  The absolute row sums of the term's Jacobian, Keras layout:

  * matrix term `W^T = Y X^T`: `||y_i||_1 + ||x_o||_1`, shape `(in, out)`;
  * Tucker-2 term `W[k, i, o] = sum_{p,q} t[p, q, k] x[o, p] y[i, q]`:
    `||x_o||_1 ||y_i||_1` (through `t`) `+ sum_p |sum_q t[p, q, k] y[i, q]|` (through `x`)
    `+ sum_q |sum_p t[p, q, k] x[o, p]|` (through `y`), shape `(k1, ..., kd, I, O)`.

  Args:
    x: output-channel factor, shape `(O, R)`.
    y: input-channel factor, shape `(I, R)`.
    t: the core, shape `(R, R, k1, ..., kd)`, or None for a matrix term.
  """
  by_x_rows = ops.sum(ops.abs(x), axis=1)                                # (O,)
  by_y_rows = ops.sum(ops.abs(y), axis=1)                                # (I,)
  if t is None:
    return ops.expand_dims(by_y_rows, 1) + ops.expand_dims(by_x_rows, 0)
  spatial = list(t.shape[2:])
  core = ops.reshape(t, [t.shape[0], t.shape[1], -1])                    # (R_p, R_q, K)
  through_t = ops.expand_dims(by_y_rows, 1) * ops.expand_dims(by_x_rows, 0)   # (I, O)
  through_x = ops.sum(ops.abs(ops.einsum('iq,pqk->kip', y, core)), axis=2)    # (K, I)
  through_y = ops.sum(ops.abs(ops.einsum('op,pqk->koq', x, core)), axis=2)    # (K, O)
  total = (ops.expand_dims(through_t, 0) + ops.expand_dims(through_x, 2)
           + ops.expand_dims(through_y, 1))
  return ops.reshape(total, spatial + [y.shape[0], x.shape[0]])


def jacobian_row_sums(scheme, term_factors, nonlinearity=None):
  """`sum_k |dW[e] / dF_k|` over every factor entry of a kernel, for each kernel entry `e`.

  Through the scheme each term's row sums are weighted by the nonlinearity's slope at that
  term and by the other term's magnitude: FedPara `|f(W2)| f'(W1) S1 + |f(W1)| f'(W2) S2`,
  pFedPara `|f(W2) + 1| f'(W1) S1 + |f(W1)| f'(W2) S2`, low-rank `f'(W1) S1`.

  Args:
    scheme: one of `SCHEMES`.
    term_factors: per term, `[x, y]` or `[x, y, t]` as they enter the product.
    nonlinearity: `None` or `'tanh'`.

  Returns:
    A tensor shaped like the kernel; its maximum is the Jacobian's infinity norm.
  """
  sums = [term_jacobian_row_sums(*factors) for factors in term_factors]
  terms = compose_terms(term_factors)
  values = [_apply(nonlinearity, w) for w in terms]
  if nonlinearity == 'tanh':
    sums = [s * (ops.ones_like(v) - v * v) for s, v in zip(sums, values)]
  if scheme == 'lowrank':
    return sums[0]
  first_weight = values[1] + ops.ones_like(values[1]) if scheme == 'pfedpara' else values[1]
  return sums[0] * ops.abs(first_weight) + sums[1] * ops.abs(values[0])


class KernelFactorization:
  """The factors of one kernel: creates them on a layer and composes the kernel.

  Dense, convolution and LSTM layers all hold one of these per kernel and only
  arrange shapes around it.

  Args:
    scheme: `'fedpara'`, `'pfedpara'` or `'lowrank'`.
    kernel_shape: Keras kernel shape, `(in, out)` or `(k1, ..., I, O)`.
    rank: inner rank R of each term.
    nonlinearity: `None` or `'tanh'`, applied to each composed term.
    factor_init: one of `FACTOR_INITS`.
    prefix: prepended to factor names (the LSTM uses `kernel_`, `recurrent_`).
    factor_lr_scale: `None`, a positive number `s` or `'matched'` (`s = 1 /
      step_gain`): each factor is stored divided by `sqrt(s)` and composed
      multiplied by it, i.e. SGD on the factors at `s` times the learning rate;
      `'safe'`: the factors' gradient is replaced at every step instead
      (`cgls.projected_step`, `SAFE_STEPS` iterations).
    adapter_scale: `None` (the factors compose the kernel), or a positive number `s`: the
      factors compose a delta `D` added to a frozen base kernel, `W = W0 + s * D`
      (`keras_layers.adapters`; docs/DESIGN.md, "Adapters"). The base is a non-trainable
      variable `<prefix>base_kernel` (zeros until set); the first term's `x` factor starts at
      zero, so that `D = 0` at first while the gradient of that factor is not zero.
  """

  def __init__(self, scheme, kernel_shape, rank, nonlinearity=None,
               factor_init='matched_glorot', prefix='', factor_lr_scale=None,
               adapter_scale=None):
    self.scheme = check_scheme(scheme)
    self.kernel_shape = tuple(kernel_shape)
    self.rank = rank
    self.nonlinearity = check_nonlinearity(nonlinearity)
    self.specs = factor_specs(scheme, kernel_shape, rank, factor_init)
    self.initial_step_gain = step_gain(scheme, self.specs, rank, len(self.kernel_shape) > 2,
                                       self.nonlinearity)
    factor_lr_scale = check_factor_lr_scale(factor_lr_scale)
    # 'safe' stores the factors as they are and replaces their gradient at every step instead
    # (under Adam, `sign_rule.prepare` turns the projection off and scales the update).
    self.safe = factor_lr_scale == SAFE
    self.projected = self.safe
    if factor_lr_scale == MATCHED:
      factor_lr_scale = 1.0 / self.initial_step_gain
    self.lr_scale = 1.0 if factor_lr_scale in (None, SAFE) else factor_lr_scale
    self.multiplier = math.sqrt(self.lr_scale)
    self.prefix = prefix
    self.factors = collections.OrderedDict()
    self._roles = {}
    self.adapter_scale = None if adapter_scale is None else float(adapter_scale)
    self.base = None   # the frozen kernel W0 of an adapter (`add_to`)

  def add_to(self, layer, regularizer=None, constraint=None):
    """Creates the factor variables on `layer` with `layer.add_weight` (and an adapter's
    frozen base kernel)."""
    zero = self.zero_factor_name() if self.adapter_scale is not None else None
    for spec in self.specs:
      # A fresh initializer per factor: an unseeded Keras initializer instance
      # returns the same values on every call, which would make W1 == W2.
      initializer = (keras.initializers.Zeros() if spec.name == zero else
                     keras.initializers.RandomNormal(stddev=spec.stddev / self.multiplier))
      variable = layer.add_weight(
          name=self.prefix + spec.name,
          shape=spec.shape,
          initializer=initializer,
          regularizer=regularizer,
          constraint=constraint,
          trainable=True)
      self.factors[spec.name] = variable
      self._roles[spec.name] = spec.role
    if self.adapter_scale is not None:
      self.base = layer.add_weight(name=self.prefix + 'base_kernel', shape=self.kernel_shape,
                                   initializer='zeros', trainable=False)
    return self

  def zero_factor_name(self):
    """The factor an adapter's delta starts at zero with: the first term's output-side `x`
    (`x` for low-rank, `x1` otherwise; pFedPara's is global). Every term of the delta is
    multiplied by the first term, so the delta is zero; the gradient of `x1` is the upstream
    gradient times the other factors, which are not zero (as LoRA's zero `B`)."""
    return 'x' + term_suffix(self.scheme, 0)

  def _term_factors(self, term_index, stored):
    suffix = term_suffix(self.scheme, term_index)
    names = ['x', 'y', 't'] if len(self.kernel_shape) > 2 else ['x', 'y']
    return [self._scaled(stored[name + suffix]) for name in names]

  def _scaled(self, value):
    if self.multiplier == 1.0:
      return value
    return value * ops.cast(self.multiplier, value.dtype)

  def factor(self, name):
    """The factor `name` as it enters the product (stored variable x multiplier)."""
    return self._scaled(self.factors[name])

  def assign_factor(self, name, value):
    """Sets factor `name` so that it enters the product with `value`."""
    self.factors[name].assign(np.asarray(value) / self.multiplier)

  def compose_terms(self, stored=None):
    """The composed terms `W_i` (before the nonlinearity), Keras layout.

    Args:
      stored: optional dict `factor name -> tensor` in the variables' (stored)
        scale, used instead of the variables (default: the variables).
    """
    stored = self.factors if stored is None else stored
    return compose_terms([self._term_factors(i, stored)
                          for i in range(term_count(self.scheme))])

  def compose(self):
    """The layer's kernel in Keras layout, composed from the current factors."""
    return self.compose_with(None)

  def compose_with(self, stored):
    """The kernel composed from `stored` (dict of stored-scale factor values).

    With `factor_lr_scale='safe'` the factors' gradient through this composition is the
    step-size rule's (`cgls.projected_step`); the value is the same.
    """
    stored = self.factors if stored is None else stored
    if not self.projected:
      return self.compose_unscaled(stored)
    names = list(self.factors)
    return cgls.projected_step(
        lambda values: self.compose_unscaled(dict(zip(names, values))),
        [stored[n] for n in names], SAFE_STEPS)

  def sign_step_bound(self):
    """`||A||_inf` at the current factors: `A = dW / dF` over the stored factor variables.

    The most any kernel entry moves, to first order, when every stored factor coordinate
    moves by at most 1: the step-size rule under Adam (`keras_layers.sign_rule`) divides the
    factors' update by it. A scalar tensor.
    """
    terms = [self._term_factors(i, self.factors) for i in range(term_count(self.scheme))]
    bound = ops.max(jacobian_row_sums(self.scheme, terms, self.nonlinearity))
    return bound * ops.cast(self.multiplier, bound.dtype)

  def compose_unscaled(self, stored=None):
    """The kernel, with the chain rule's gradient whatever `factor_lr_scale` says (analysis);
    an adapter's `W0 + s * D`."""
    stored = self.factors if stored is None else stored
    delta = self._delta(stored)
    return delta if self.base is None else self.base + delta

  def _delta(self, stored):
    """What the factors compose: the kernel, or an adapter's scaled delta `s * D`."""
    kernel = combine_terms(self.scheme, self.compose_terms(stored), self.nonlinearity)
    return kernel if self.base is None else ops.cast(self.adapter_scale, kernel.dtype) * kernel

  def global_kernel(self, stored=None):
    """What the global factors compose, from `stored` (dict of stored-scale values of at least
    the global factors; default the variables): the kernel itself for FedPara and low-rank,
    the global term `f(W1)` for pFedPara (whose `W2` is the client's own); for an adapter, its
    delta `s * D` (the frozen base takes no part in the averaging). What the server averages
    when it averages factors (`fedpara_tff.aggregation_error`)."""
    stored = self.factors if stored is None else stored
    if self.scheme != 'pfedpara':
      return self._delta(stored)
    return _apply(self.nonlinearity, compose_terms([self._term_factors(0, stored)])[0])

  @property
  def global_names(self):
    """Names of the global factors, in creation order."""
    return [n for n in self.factors if self._roles[n] == GLOBAL]

  @property
  def local_variables(self):
    return [v for n, v in self.factors.items() if self._roles[n] == LOCAL]

  @property
  def global_variables(self):
    return [v for n, v in self.factors.items() if self._roles[n] == GLOBAL]

  @property
  def param_count(self):
    return sum(math.prod(spec.shape) for spec in self.specs)
