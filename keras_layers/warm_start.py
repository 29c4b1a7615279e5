"""Warm-start conversion: factors fitted to the pretrained kernel they replace (`convert(...,
init='fit')`), so that a converted model keeps what the plain one learned as far as its rank
allows (docs/DESIGN.md, "Warm-start conversion").

Per kernel `T` (Keras layout: `(in, out)`, or `(k..., I, O)` for a convolution):

1. A start computed in closed form. Low-rank: the truncated SVD of `T` (Eckart-Young: the best
   rank-R matrix), or for a convolution the truncated higher-order SVD of its two channel modes
   (Tucker-2). FedPara, `W = W1 * W2`: `W1` the constant `s = sqrt(rms(T))` (a rank-1 term) and
   `W2` that fit of `T / s`, so the start is as good as the rank-R fit. pFedPara,
   `W = W1 * (W2 + 1)`: `W1` that fit of `T`, the local `W2` near zero. Factors of a term are
   balanced (equal root-mean-square entries), and every FedPara / pFedPara factor gets a
   deterministic jitter (seed 0) of `JITTERS` times its scale, so that no column starts at
   exactly zero, where its gradient would stay zero.
2. `FIT_STEPS` Gauss-Newton steps on `||W(F) - T||_F` in float64 (each `FIT_CG_STEPS` CGLS
   iterations of the step-size rule's solver, `keras_layers.cgls`; of the step and its halves
   down to 1/8 the best is kept, none if none lowers the error). From the small jitter the steps
   stay near the rank-R fit (the constant term is a saddle of the fit); from the large one they
   reach the higher ranks a Hadamard product holds (on a random 64 x 48 kernel at rank 4: 0.71,
   below even the rank-8 SVD's 0.76, where the small jitter stays at the rank-4 SVD's 0.87). The
   better of the two is kept, so the fit is never worse than the start. Fixed counts, seeded
   jitter: the same kernel gives the same factors. The steps need TensorFlow (Keras 2, or Keras 3
   on TensorFlow); elsewhere the closed-form start is kept.

`fit_kernel` returns the relative error `||W(F) - T|| / ||T||` the layer then carries
(`parameter_report`'s `fit error`).
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from keras_layers import backend
from keras_layers import einsum_layout

FIT_STEPS = 20
FIT_CG_STEPS = 10
JITTERS = (1e-3, 0.3)   # FedPara / pFedPara starts: the factors' jitter, times their scale


def _rms(a):
  return float(np.sqrt(np.mean(np.square(a)))) or 1.0


def matrix_fit(target: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
  """`(x (out, R), y (in, R))` with `y x^T` the best rank-`rank` approximation of `target`
  `(in, out)` (truncated SVD), the two balanced; columns beyond `min(in, out)` are zero."""
  u, s, vt = np.linalg.svd(target, full_matrices=False)
  r = min(rank, len(s))
  root = np.sqrt(s[:r])
  x, y = np.zeros((target.shape[1], rank)), np.zeros((target.shape[0], rank))
  y[:, :r], x[:, :r] = u[:, :r] * root, vt[:r].T * root
  return x, y


def _leading_vectors(unfolded, rank):
  u, _, _ = np.linalg.svd(unfolded, full_matrices=False)
  out = np.zeros((unfolded.shape[0], rank))
  r = min(rank, u.shape[1])
  out[:, :r] = u[:, :r]
  return out


def tucker_fit(target: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(x (O, R), y (I, R), t (R, R, k...))`: the truncated higher-order SVD of a convolution
  kernel `(k..., I, O)` in its two channel modes, `W[..., i, o] = sum_pq t[p, q, ...] x[o, p]
  y[i, q]`, the three balanced."""
  x = _leading_vectors(np.moveaxis(target, -1, 0).reshape(target.shape[-1], -1), rank)
  y = _leading_vectors(np.moveaxis(target, -2, 0).reshape(target.shape[-2], -1), rank)
  t = np.moveaxis(np.einsum('...io,op,iq->...pq', target, x, y), (-2, -1), (0, 1))
  g = (_rms(t) * _rms(x) * _rms(y)) ** (1.0 / 3.0)
  a, b = g / _rms(x), g / _rms(y)
  return x * a, y * b, t / (a * b)


def _term_fit(target, rank):
  """The factors `[x, y(, t)]` of one term fitted to `target` (matrix or Tucker-2)."""
  return list(matrix_fit(target, rank) if target.ndim == 2 else tucker_fit(target, rank))


def _constant_term(shape, rank, value):
  """Factors `[x, y(, t)]` of a term equal to `value` everywhere (rank 1 of `rank`), balanced."""
  out_dim, in_dim = shape[-1], shape[-2]
  tucker = len(shape) > 2
  scale = abs(value) ** (1.0 / (3.0 if tucker else 2.0))
  x, y = np.zeros((out_dim, rank)), np.zeros((in_dim, rank))
  x[:, 0], y[:, 0] = scale, scale
  if not tucker:
    return [x, y]
  t = np.zeros((rank, rank) + tuple(shape[:-2]))
  t[0, 0] = value / scale ** 2
  return [x, y, t]


def start_values(factorization, target: np.ndarray,
                 jitter: float = JITTERS[0]) -> Dict[str, np.ndarray]:
  """The closed-form start (step 1 of the module docstring): factor name -> value, in the scale
  the factors enter the product with."""
  names = [spec.name for spec in factorization.specs]
  rank, scheme = factorization.rank, factorization.scheme
  if scheme == 'lowrank':
    return dict(zip(names, _term_fit(target, rank)))
  if scheme == 'fedpara':
    s = math.sqrt(_rms(target))
    terms = _constant_term(target.shape, rank, s) + _term_fit(target / s, rank)
  else:   # pfedpara: W1 fits T, the local W2 starts near zero
    terms = _term_fit(target, rank) + [np.zeros(spec.shape) for spec in
                                       factorization.specs[len(names) // 2:]]
  rng = np.random.default_rng(0)
  values = {}
  for spec, value in zip(factorization.specs, terms):
    scale = _rms(value) if np.any(value) else _rms(target) ** (1.0 / len(spec.shape))
    values[spec.name] = value + jitter * scale * rng.standard_normal(spec.shape)
  return values


def _refine(factorization, target, starts, steps, cg_steps):
  """`steps` Gauss-Newton steps from each of `starts` (factor name -> value, composed scale) in
  float64 (`keras_layers.cgls.gauss_newton_fits`, one traced step for every start); returns the
  refined values of each."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # the TensorFlow backend only
  from keras_layers import cgls  # pylint: disable=g-import-not-at-top
  names, multiplier = list(starts[0]), factorization.multiplier

  def compose(factors):
    return factorization.compose_unscaled({n: f / multiplier for n, f in zip(names, factors)})

  fitted = cgls.gauss_newton_fits(
      compose, tf.constant(target, tf.float64),
      [[tf.constant(values[n], tf.float64) for n in names] for values in starts], steps,
      cg_steps)
  return [{n: f.numpy() for n, f in zip(names, factors)} for factors in fitted]


def _can_refine():
  return not backend.IS_KERAS_3 or backend.keras.backend.backend() == 'tensorflow'


def _relative_error(composed, target):
  """`||W - T|| / ||T||` in float64 (0 for a zero `T`)."""
  norm = float(np.linalg.norm(target))
  composed = backend.to_numpy(composed).astype(np.float64)
  return float(np.linalg.norm(composed - target)) / norm if norm else 0.0


def _error(factorization, target, values):
  """The relative error of the kernel `values` compose (composed scale, float64)."""
  stored = {n: np.asarray(v, np.float64) / factorization.multiplier for n, v in values.items()}
  return _relative_error(factorization.compose_unscaled(stored), target)


def fit_values(factorization, target, steps: Optional[int] = None,
               cg_steps: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The fitted factors of `target` (module docstring), in the composed scale; `steps` and
  `cg_steps` default to `FIT_STEPS` and `FIT_CG_STEPS` as they are at the call."""
  steps = FIT_STEPS if steps is None else steps
  cg_steps = FIT_CG_STEPS if cg_steps is None else cg_steps
  if factorization.scheme == 'lowrank':
    starts = [start_values(factorization, target)]
    if target.ndim == 2:   # the truncated SVD is the optimum (Eckart-Young)
      return starts[0]
  else:
    starts = [start_values(factorization, target, jitter) for jitter in JITTERS]
  if steps and _can_refine():
    starts = _refine(factorization, target, starts, steps, cg_steps)
  return min(starts, key=lambda values: _error(factorization, target, values))


def fit_kernel(factorization, target, steps: Optional[int] = None,
               cg_steps: Optional[int] = None) -> float:
  """Sets `factorization`'s factors to fit the kernel `target` (module docstring); returns the
  relative error `||W(F) - T||_F / ||T||_F` of the factors set (0 for a zero kernel)."""
  target = np.asarray(target, np.float64)
  if tuple(target.shape) != tuple(factorization.kernel_shape):
    raise ValueError(f'the kernel to fit has shape {tuple(target.shape)}; the factors compose '
                     f'{tuple(factorization.kernel_shape)}.')
  for name, value in fit_values(factorization, target, steps, cg_steps).items():
    factorization.assign_factor(name, value.astype(np.float32))
  return _relative_error(factorization.compose_unscaled(), target)   # of the float32 factors


def plain_kernel_variables(layer) -> List[Any]:
  """The kernel variables of a built plain Dense / Conv / EinsumDense (`[kernel]`) or LSTM /
  WeightNormLSTM (`[kernel, recurrent_kernel]`), in the order of the factorised twin's
  factorizations."""
  cell = getattr(layer, 'cell', None)
  if cell is not None:
    return [cell.kernel, cell.recurrent_kernel]
  return [layer.kernel]


def _einsum_equation(layer):
  """An `EinsumDense`'s equation (its kernel is factorised as a matrix), else None."""
  return layer.equation if isinstance(layer, backend.keras.layers.EinsumDense) else None


def plain_kernel_shapes(layer) -> List[Tuple[int, ...]]:
  """The shapes of `plain_kernel_variables(layer)` as the twin factorises them: an
  `EinsumDense`'s kernel as its matrix (`einsum_layout.matrix_shape`), the others as they are."""
  equation = _einsum_equation(layer)
  shapes = [tuple(int(d) for d in kernel.shape) for kernel in plain_kernel_variables(layer)]
  return shapes if equation is None else [einsum_layout.matrix_shape(equation, shapes[0])]


def plain_kernels(layer) -> List[np.ndarray]:
  """The values of `plain_kernel_variables(layer)` as the twin factorises them (numpy; an
  `EinsumDense`'s kernel as its matrix, `einsum_layout.to_matrix`)."""
  equation = _einsum_equation(layer)
  values = [backend.to_numpy(kernel) for kernel in plain_kernel_variables(layer)]
  return values if equation is None else [einsum_layout.to_matrix(values[0], equation)]


def plain_bias(layer):
  """The bias of a plain layer (an LSTM's: its cell's), or None."""
  holder = getattr(layer, 'cell', layer)
  return getattr(holder, 'bias', None)


def copy_bias(plain, twin) -> None:
  """Sets the bias of `twin` (a factorised layer or cell holder) to the plain layer's, where
  both have one."""
  source, destination = plain_bias(plain), plain_bias(twin)
  if source is not None and destination is not None:
    destination.assign(backend.to_numpy(source))


def warm_start(plain, twin) -> Sequence[float]:
  """Fits every factorised kernel of `twin` (the factorised part of a converted layer) to its
  kernel in `plain` and copies the bias; returns the relative fit error per kernel, which it
  also keeps as `twin.fit_errors`."""
  errors = tuple(fit_kernel(factorization, kernel) for factorization, kernel
                 in zip(twin.factorizations, plain_kernels(plain)))
  copy_bias(plain, twin)
  twin.fit_errors = errors
  return errors
