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
"""

import collections
import math

import tensorflow as tf

from keras_layers import ranks

SCHEMES = ('fedpara', 'pfedpara', 'lowrank')
NONLINEARITIES = (None, 'tanh')
FACTOR_INITS = ('matched_glorot', 'matched_he', 'he_fan_in', 'he_fan_out')

GLOBAL = 'global'
LOCAL = 'local'

FactorSpec = collections.namedtuple('FactorSpec', ['name', 'shape', 'role', 'stddev'])


def check_scheme(scheme):
  if scheme not in SCHEMES:
    raise ValueError(f'scheme must be one of {SCHEMES}; got {scheme!r}.')
  return scheme


def check_nonlinearity(nonlinearity):
  if nonlinearity not in NONLINEARITIES:
    raise ValueError(
        f'nonlinearity must be one of {NONLINEARITIES}; got {nonlinearity!r}.')
  return nonlinearity


def check_factor_init(factor_init):
  if factor_init not in FACTOR_INITS:
    raise ValueError(
        f'factor_init must be one of {FACTOR_INITS}; got {factor_init!r}.')
  return factor_init


# ---------------------------------------------------------------------------
# Composition (pure functions of tensors).


def compose_matrix_terms(x, y):
  """Returns `Y_b X_b^T`, shape `(B, in, out)`, from `x (B, out, R)` and `y (B, in, R)`."""
  return tf.matmul(y, x, transpose_b=True)


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
  t_k = tf.reshape(tf.transpose(t, [0] + list(range(3, n + 3)) + [2, 1]),
                   [terms, -1, rank_q, rank_p])
  a = tf.matmul(y[:, tf.newaxis], t_k)                                   # (B, K, I, R_p)
  w = tf.matmul(tf.reshape(a, [terms, -1, rank_p]), x, transpose_b=True)  # (B, K*I, O)
  return tf.reshape(w, [terms] + spatial + [fan_in, fan_out])


def compose_terms(term_factors):
  """Composes every term at once from per-term `(x, y)` or `(x, y, t)` lists.

  The terms share their shapes, so their factors are stacked and composed
  with batched products (one pass instead of one per term).

  Returns:
    A list with one kernel per term, Keras layout.
  """
  stacked = [tf.stack(list(same_kind)) for same_kind in zip(*term_factors)]
  if len(stacked) == 2:
    composed = compose_matrix_terms(*stacked)
  else:
    x, y, t = stacked
    composed = compose_tucker_terms(t, x, y)
  return tf.unstack(composed, num=len(term_factors))


def _apply(nonlinearity, w):
  return tf.tanh(w) if nonlinearity == 'tanh' else w


def combine_terms(scheme, terms, nonlinearity=None):
  """Combines composed terms into the kernel according to `scheme`."""
  if scheme == 'lowrank':
    (w,) = terms
    return _apply(nonlinearity, w)
  w1, w2 = (_apply(nonlinearity, w) for w in terms)
  if scheme == 'fedpara':
    return w1 * w2
  return w1 * (w2 + tf.ones_like(w2))


# ---------------------------------------------------------------------------
# Factor shapes, names, roles and initial standard deviations.


def _term_count(scheme):
  return 1 if scheme == 'lowrank' else 2


def _term_suffix(scheme, term_index):
  if scheme == 'lowrank':
    return ''
  if scheme == 'pfedpara' and term_index == 1:
    return '2_local'
  return str(term_index + 1)


def _target_variance(kernel_shape, factor_init):
  """Per-entry variance of the replaced layer's default (Glorot or He) kernel."""
  spatial, fan_in, fan_out = ranks.split_kernel_shape(kernel_shape)
  receptive = math.prod(spatial) if spatial else 1
  fan_in, fan_out = fan_in * receptive, fan_out * receptive
  if factor_init == 'matched_he':
    return 2.0 / fan_in
  return 2.0 / (fan_in + fan_out)


def term_variances(scheme, target_variance):
  """Variance each term must have for the kernel to have `target_variance`.

  With independent zero-mean terms: FedPara `Var(W1) Var(W2) = v`, so each
  term gets `sqrt(v)`; pFedPara `Var(W1) (Var(W2) + 1) = v` with the local term
  at `sqrt(v)` and the global one at `v / (1 + sqrt(v))`; low-rank `v`.
  """
  if scheme == 'lowrank':
    return (target_variance,)
  root = math.sqrt(target_variance)
  if scheme == 'fedpara':
    return (root, root)
  return (target_variance / (1.0 + root), root)


def _matched_stddev(term_variance, rank, tucker):
  """Equal std of each factor so that one term has `term_variance`.

  Matrix term: `Var = R s^4`. Tucker-2 term: `Var = R^2 s^6`.
  """
  if tucker:
    return (term_variance / rank**2) ** (1.0 / 6.0)
  return (term_variance / rank) ** 0.25


def _he_stddev(shape, factor_name, factor_init):
  """He-normal std per factor, fans from the factor's place in the product.

  `x (out, R)` maps R -> out; `y (in, R)` maps in -> R (it enters as `Y^T`);
  `t (R, R, k...)` maps R k -> R k.
  """
  receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
  if factor_name == 't':
    fan_in = fan_out = shape[1] * receptive
  elif factor_name == 'x':
    fan_in, fan_out = shape[1], shape[0]
  else:
    fan_in, fan_out = shape[0], shape[1]
  fan = fan_in if factor_init == 'he_fan_in' else fan_out
  return math.sqrt(2.0 / fan)


def factor_specs(scheme, kernel_shape, rank, factor_init='matched_glorot'):
  """Lists the factors of one kernel: name, shape, role and initial std.

  Args:
    scheme: one of `SCHEMES`.
    kernel_shape: Keras kernel shape, `(in, out)` or `(k1, ..., I, O)`.
    rank: inner rank R of each term.
    factor_init: one of `FACTOR_INITS`. The `matched_*` modes make the
      composed kernel's per-entry variance equal the Glorot (or He) variance of
      the plain layer (SPEC section 3); the `he_*` modes draw every factor
      He-normal on its own fan-in or fan-out (for ablations).

  Returns:
    A list of `FactorSpec`, `x` before `y` before `t`, term 1 before term 2.
  """
  check_scheme(scheme)
  check_factor_init(factor_init)
  spatial, fan_in, fan_out = ranks.split_kernel_shape(kernel_shape)
  tucker = bool(spatial)
  shapes = [('x', (fan_out, rank)), ('y', (fan_in, rank))]
  if tucker:
    shapes.append(('t', (rank, rank) + tuple(spatial)))
  variances = term_variances(scheme, _target_variance(kernel_shape, factor_init))
  specs = []
  for term in range(_term_count(scheme)):
    role = LOCAL if (scheme == 'pfedpara' and term == 1) else GLOBAL
    for base, shape in shapes:
      if factor_init.startswith('matched'):
        stddev = _matched_stddev(variances[term], rank, tucker)
      else:
        stddev = _he_stddev(shape, base, factor_init)
      specs.append(FactorSpec(base + _term_suffix(scheme, term), shape, role, stddev))
  return specs


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
  """

  def __init__(self, scheme, kernel_shape, rank, nonlinearity=None,
               factor_init='matched_glorot', prefix=''):
    self.scheme = check_scheme(scheme)
    self.kernel_shape = tuple(kernel_shape)
    self.rank = rank
    self.nonlinearity = check_nonlinearity(nonlinearity)
    self.specs = factor_specs(scheme, kernel_shape, rank, factor_init)
    self.prefix = prefix
    self.factors = collections.OrderedDict()
    self._roles = {}

  def add_to(self, layer, regularizer=None, constraint=None):
    """Creates the factor variables on `layer` with `layer.add_weight`."""
    for spec in self.specs:
      # A fresh initializer per factor: an unseeded Keras initializer instance
      # returns the same values on every call, which would make W1 == W2.
      variable = layer.add_weight(
          name=self.prefix + spec.name,
          shape=spec.shape,
          initializer=tf.keras.initializers.RandomNormal(stddev=spec.stddev),
          regularizer=regularizer,
          constraint=constraint,
          trainable=True)
      self.factors[spec.name] = variable
      self._roles[spec.name] = spec.role
    return self

  def _term_factors(self, term_index):
    suffix = _term_suffix(self.scheme, term_index)
    names = ['x', 'y', 't'] if len(self.kernel_shape) > 2 else ['x', 'y']
    return [self.factors[name + suffix] for name in names]

  def compose_terms(self):
    """The composed terms `W_i` (before the nonlinearity), Keras layout."""
    return compose_terms([self._term_factors(i)
                          for i in range(_term_count(self.scheme))])

  def compose(self):
    """The layer's kernel in Keras layout, composed from the current factors."""
    return combine_terms(self.scheme, self.compose_terms(), self.nonlinearity)

  @property
  def local_variables(self):
    return [v for n, v in self.factors.items() if self._roles[n] == LOCAL]

  @property
  def global_variables(self):
    return [v for n, v in self.factors.items() if self._roles[n] == GLOBAL]

  @property
  def param_count(self):
    return sum(math.prod(spec.shape) for spec in self.specs)
