"""Rank rule of FedPara (docs/DESIGN.md, "Rank rule") and parameter counts of every layer type.

A kernel is described by its Keras shape: `(in, out)` for a dense kernel and
`(k1, ..., I, O)` for a convolution kernel (any number of spatial axes). The
rank `R` of a FedPara layer is the inner rank of each of its two Hadamard terms.

Worked figures (pinned by the tests): a 256->256 3x3 convolution has
`r_min = 16` and `r_max = 154`; gamma 0.1 gives `R = 30` (46,920 parameters),
gamma 0.4 gives `R = 72`; `param_ratio=0.1` gives `R = 36` (60,192 parameters).
"""

from typing import Sequence

import math
import warnings

from keras_layers import validation

# Tolerance for the floating-point interpolation in `rank_for_gamma`, so that a
# mathematically integral value such as 30.000000000004 is not rounded up.
_CEIL_EPS = 1e-9


def is_positive_int(value):
  """True for a positive integer (bools, floats and strings are not)."""
  return validation.is_integer(value, 1)


def _check_kernel_shape(kernel_shape):
  shape = tuple(kernel_shape)
  if len(shape) < 2 or not all(is_positive_int(d) for d in shape):
    raise ValueError(
        f'kernel_shape must be a tuple of positive integers (in, out) or '
        f'(k1, ..., I, O); got {kernel_shape!r}.')
  return tuple(int(d) for d in shape)


def split_kernel_shape(kernel_shape):
  """Returns `(spatial, fan_in_channels, fan_out_channels)` of a Keras kernel.

  Args:
    kernel_shape: `(in, out)` or `(k1, ..., I, O)`.

  Returns:
    A tuple `(spatial, I, O)` where `spatial` is a tuple (empty for dense).
  """
  shape = _check_kernel_shape(kernel_shape)
  return shape[:-2], shape[-2], shape[-1]


def _spatial_size(spatial):
  return math.prod(spatial) if spatial else 1


def fedpara_param_count(kernel_shape: Sequence[int], rank: int) -> int:
  """Parameters of a FedPara (or pFedPara, both terms) factorised kernel.

  Dense: `2R(in + out)`. Convolution: `2R(O + I + R k1 k2)`. Bias excluded.
  """
  spatial, fan_in, fan_out = split_kernel_shape(kernel_shape)
  if not spatial:
    return 2 * rank * (fan_in + fan_out)
  return 2 * rank * (fan_out + fan_in + rank * _spatial_size(spatial))


def lowrank_param_count(kernel_shape: Sequence[int], rank: int) -> int:
  """Parameters of a conventional low-rank kernel with inner rank `rank`.

  Dense `W = X Y^T`: `rank (in + out)`. Convolution (Tucker-2,
  `W = T x1 X x2 Y`): `rank (O + I + rank k1 k2)`. Bias excluded.
  """
  spatial, fan_in, fan_out = split_kernel_shape(kernel_shape)
  if not spatial:
    return rank * (fan_in + fan_out)
  return rank * (fan_out + fan_in + rank * _spatial_size(spatial))


def original_param_count(kernel_shape: Sequence[int]) -> int:
  """Elements of the plain kernel (`in * out` or `k1 k2 I O`)."""
  return math.prod(_check_kernel_shape(kernel_shape))


def max_rank(kernel_shape):
  """Largest rank any kernel of this shape has: `min(in, out)`, or `min(O, I k1 k2)` for conv.

  The bound is on the kernel's unfolding `(O, I k1 k2)` (the matrix a
  convolution multiplies by), not on the inner rank of a factorisation.
  """
  spatial, fan_in, fan_out = split_kernel_shape(kernel_shape)
  return min(fan_in * _spatial_size(spatial), fan_out)


def largest_dimension(kernel_shape):
  """The larger side of the kernel's `(O, I k1 k2)` unfolding: a factorisation of a larger
  inner rank has more than twice the plain kernel's parameters (`FactorizedLayer` refuses it)."""
  spatial, fan_in, fan_out = split_kernel_shape(kernel_shape)
  return max(fan_in * _spatial_size(spatial), fan_out)


def reachable_rank(scheme, kernel_shape, rank):
  """Upper bound on the rank of the composed kernel's `(O, I k1 k2)` unfolding.

  FedPara: `min(R^2, O, I k1 k2)` (Proposition 1; for Tucker-2 each term's
  unfolding has rank at most R through `X (O, R)`). pFedPara: `W1 * (W2 + 1)`,
  at most `R (R + 1)`. Low-rank: `min(R, O, I k1 k2)`.
  """
  if scheme == 'lowrank':
    inner = rank
  elif scheme == 'pfedpara':
    inner = rank * (rank + 1)
  else:
    inner = rank * rank
  return min(inner, max_rank(kernel_shape))


_warned_ranks = set()


def warn_if_rank_unreachable(scheme, kernel_shape, rank, layer_name=''):
  """Warns once when `rank` adds parameters but not reachable rank (rank - 1 reaches as much).

  The message names the smallest rank that already reaches the same bound.
  """
  shape = _check_kernel_shape(kernel_shape)
  reached = reachable_rank(scheme, shape, rank)
  if rank <= 1 or reachable_rank(scheme, shape, rank - 1) < reached:
    return
  smallest = next(r for r in range(1, rank) if reachable_rank(scheme, shape, r) == reached)
  key = (scheme, shape, rank)
  if key in _warned_ranks:
    return
  _warned_ranks.add(key)
  warnings.warn(
      f'{layer_name}: rank {rank} adds parameters without adding reachable rank for kernel '
      f'shape {shape} (rank {smallest} already reaches {reached}).',
      stacklevel=4)


def r_min(kernel_shape: Sequence[int]) -> int:
  """Smallest rank whose composed kernel can still be full rank.

  `ceil(sqrt(min(in, out)))`: the Hadamard product of two rank-R matrices has
  rank at most R^2 (Proposition 1 of the paper).
  """
  _, fan_in, fan_out = split_kernel_shape(kernel_shape)
  return math.isqrt(min(fan_in, fan_out) - 1) + 1


def _largest_rank_within(count_fn, kernel_shape, budget):
  """Largest integer R >= 0 with `count_fn(kernel_shape, R) <= budget`."""
  lo, hi = 0, max_rank(kernel_shape) * 4 + 1
  while count_fn(kernel_shape, hi) <= budget:
    hi *= 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if count_fn(kernel_shape, mid) <= budget:
      lo = mid
    else:
      hi = mid
  return lo


def r_max(kernel_shape: Sequence[int]) -> int:
  """Largest FedPara rank whose parameter count does not exceed the original.

  Dense: `floor(in*out / (2(in+out)))`. Convolution: the largest `R` with
  `2R(O + I + R k1 k2) <= O I k1 k2`. It can be 0 for tiny layers, which
  then cannot be factorised at all.
  """
  return _largest_rank_within(fedpara_param_count, kernel_shape,
                              original_param_count(kernel_shape))


def check_gamma(gamma):
  return validation.number(gamma, 'gamma', 0.0, 1.0)


def check_param_ratio(param_ratio):
  return validation.number(param_ratio, 'param_ratio', 0.0, 1.0, low_closed=False)


_warned_shapes = set()


def _warn_incompressible_once(kernel_shape, lower, upper):
  if kernel_shape in _warned_shapes:
    return
  _warned_shapes.add(kernel_shape)
  warnings.warn(
      f'kernel of shape {kernel_shape} cannot be compressed: r_min {lower} > '
      f'r_max {upper}; using rank {upper}, which cannot reach full rank.',
      stacklevel=3)


def rank_for_gamma(kernel_shape: Sequence[int], gamma: float) -> int:
  """FedPara rank for the knob `gamma` in [0, 1] (docs/DESIGN.md, "Rank rule").

  `R = ceil((1 - gamma) r_min + gamma r_max)`, clamped to `[1, r_max]`. When
  `r_min > r_max` (tiny layers) the result is `r_max` and a warning is issued
  once per shape.

  Raises:
    ValueError: gamma outside [0, 1], or `r_max == 0` (the layer has fewer
      parameters than any rank-1 FedPara factorisation).
  """
  gamma = check_gamma(gamma)
  shape = _check_kernel_shape(kernel_shape)
  lower, upper = r_min(shape), r_max(shape)
  if upper < 1:
    raise ValueError(
        f'kernel of shape {shape} is too small to factorise: even rank 1 '
        f'needs {fedpara_param_count(shape, 1)} parameters, the plain kernel '
        f'has {original_param_count(shape)}; keep this layer plain.')
  if lower > upper:
    _warn_incompressible_once(shape, lower, upper)
    return upper
  rank = math.ceil((1.0 - gamma) * lower + gamma * upper - _CEIL_EPS)
  return min(max(rank, 1), upper)


def rank_for_param_ratio(kernel_shape: Sequence[int], param_ratio: float) -> int:
  """FedPara rank whose parameter count is about `param_ratio` of the original.

  Solves `2R(O + I + R k1 k2) = ratio * O I k1 k2` (dense: `2R(in + out) =
  ratio * in * out`) for R, rounds up, and floors the result at
  `max(ceil(sqrt(O)), ceil(sqrt(I)))`, capped at `r_max` (the budget) when
  `r_max` is at least 1.
  """
  ratio = check_param_ratio(param_ratio)
  spatial, fan_in, fan_out = split_kernel_shape(kernel_shape)
  budget = ratio * original_param_count(kernel_shape)
  k = _spatial_size(spatial)
  if spatial:
    # 2k R^2 + 2(O + I) R - budget = 0.
    a, b = 2.0 * k, 2.0 * (fan_in + fan_out)
    solution = (-b + math.sqrt(b * b + 4.0 * a * budget)) / (2.0 * a)
  else:
    solution = budget / (2.0 * (fan_in + fan_out))
  floor = max(math.isqrt(fan_out - 1) + 1, math.isqrt(fan_in - 1) + 1)
  rank = max(math.ceil(solution - _CEIL_EPS), floor)
  upper = r_max(kernel_shape)
  return min(rank, upper) if upper >= 1 else rank


def lowrank_rank_matching(kernel_shape, fedpara_rank):
  """Inner rank of the low-rank baseline matching a FedPara layer's size.

  Dense: `2R` (exactly the same count), capped at `min(in, out)` (a larger
  inner rank adds nothing). Convolution: the largest `R'` with
  `R'(O + I + R' k1 k2) <= 2R(O + I + R k1 k2)`, capped at `min(O, I k1 k2)`.
  """
  budget = fedpara_param_count(kernel_shape, fedpara_rank)
  rank = _largest_rank_within(lowrank_param_count, kernel_shape, budget)
  return max(1, min(rank, max_rank(kernel_shape)))
