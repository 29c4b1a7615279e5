"""Load factors trained in the authors' PyTorch layout into our layers.

The authors' FedPara convolution stores, per term, an output factor
`O (R, out)`, an input factor `I (R, in)` and a core `T (R, R, kh, kw)`, and
composes the kernel `(out, in, kh, kw)` with `einsum("xyzw,xo,yi->oizw", T, O, I)`.
Ours stores `x = O^T (out, R)`, `y = I^T (in, R)` and the same `t`, and keeps
the kernel in Keras layout `(kh, kw, in, out)`. Dense terms have no core.
"""

from typing import Any, Sequence

import numpy as np


def torch_kernel_to_keras(kernel: Any) -> np.ndarray:
  """`(out, in)` -> `(in, out)`; `(out, in, k1, ..., kd)` -> `(k1, ..., kd, in, out)`."""
  kernel = np.asarray(kernel)
  if kernel.ndim == 2:
    return kernel.T
  return np.transpose(kernel, tuple(range(2, kernel.ndim)) + (1, 0))


def load_torch_factors(layer: Any, terms: Sequence[Any], bias: Any = None) -> None:
  """Assigns factors given in the PyTorch layout to a built factorised layer.

  Args:
    layer: a built FedPara / pFedPara / low-rank Dense or Conv layer.
    terms: one dict per term (two for FedPara and pFedPara, one for low-rank),
      with keys `'O'` `(R, out)`, `'I'` `(R, in)` and, for convolutions, `'T'`
      `(R, R, k1, ..., kd)`.
    bias: optional `(out,)` array.

  Raises:
    ValueError: wrong number of terms, a missing key, or a shape mismatch.
  """
  (factorization,) = layer.factorizations
  expected_terms = 1 if factorization.scheme == 'lowrank' else 2
  if len(terms) != expected_terms:
    raise ValueError(f'{layer.name}: expected {expected_terms} term(s) for scheme '
                     f'{factorization.scheme!r}; got {len(terms)}.')
  names = list(factorization.factors)
  per_term = len(names) // expected_terms
  for term, names_of_term in zip(terms, (names[i:i + per_term]
                                         for i in range(0, len(names), per_term))):
    for name in names_of_term:
      key = {'x': 'O', 'y': 'I', 't': 'T'}[name[0]]
      if key not in term:
        raise ValueError(f'{layer.name}: term is missing {key!r} (for {name}); '
                         f'it has {sorted(term)}.')
      given = np.asarray(term[key])
      value = given if key == 'T' else given.T
      variable = factorization.factors[name]
      if value.shape != tuple(variable.shape):
        expected = tuple(variable.shape) if key == 'T' else tuple(variable.shape)[::-1]
        raise ValueError(f'{layer.name}: {key} for {name} has shape {given.shape}; '
                         f'expected {expected}.')
      factorization.assign_factor(name, value)
  if bias is not None:
    layer.bias.assign(np.asarray(bias))
