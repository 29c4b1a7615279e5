"""The factors of one kernel: their shapes, names, roles and initial standard deviations.

`factor_specs` lists them for `keras_layers.factors.KernelFactorization`: `x (out, R)` and
`y (in, R)` per term, plus the Tucker-2 core `t (R, R, k1, ..., kd)` for a convolution, term 1
before term 2. The `matched_*` initialisations give the composed kernel the plain layer's Glorot
(or He) per-entry variance (docs/DESIGN.md, "Initialisation").
"""

import collections
import math

from keras_layers import factor_options
from keras_layers import ranks

GLOBAL = 'global'
LOCAL = 'local'

FactorSpec = collections.namedtuple('FactorSpec', ['name', 'shape', 'role', 'stddev'])


def term_count(scheme):
  """How many terms the scheme combines: one for low-rank, two otherwise."""
  return 1 if scheme == 'lowrank' else 2


def term_suffix(scheme, term_index):
  """The suffix of a term's factor names: '' (low-rank), '1', '2' or '2_local' (pFedPara)."""
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
      the plain layer (docs/DESIGN.md, "Initialisation"); the `he_*` modes draw every factor
      He-normal on its own fan-in or fan-out (for ablations).

  Returns:
    A list of `FactorSpec`, `x` before `y` before `t`, term 1 before term 2.
  """
  factor_options.check_scheme(scheme)
  factor_options.check_factor_init(factor_init)
  spatial, fan_in, fan_out = ranks.split_kernel_shape(kernel_shape)
  tucker = bool(spatial)
  shapes = [('x', (fan_out, rank)), ('y', (fan_in, rank))]
  if tucker:
    shapes.append(('t', (rank, rank) + tuple(spatial)))
  variances = term_variances(scheme, _target_variance(kernel_shape, factor_init))
  specs = []
  for term in range(term_count(scheme)):
    role = LOCAL if (scheme == 'pfedpara' and term == 1) else GLOBAL
    for base, shape in shapes:
      if factor_init.startswith('matched'):
        stddev = _matched_stddev(variances[term], rank, tucker)
      else:
        stddev = _he_stddev(shape, base, factor_init)
      specs.append(FactorSpec(base + term_suffix(scheme, term), shape, role, stddev))
  return specs
