"""The matrix an `EinsumDense` kernel is factorised as, and the shapes its equation implies.

An `EinsumDense` kernel can have any number of axes (MultiHeadAttention's query projection
`'abc,cde->abde'` holds a kernel `(model_dim, heads, key_dim)`). Its factorised twin factorises
one matrix: the kernel's axes that also index the input (the contracted ones) are its rows, the
others its columns, each group in the kernel's order. The query kernel is then the matrix
`(model_dim, heads * key_dim)`, the Dense from the model dimension to every head at once
(docs/DESIGN.md, "EinsumDense"). Keras' own `EinsumDense(lora_rank=...)` splits the kernel
before its last axis instead (`(model_dim * heads, key_dim)` for the query).

Equations: `'<input>,<kernel>-><output>'` in letters, the input and output optionally starting
with `...` (as Keras' `EinsumDense`); an ellipsis at the right end is refused. Shapes align the
specs with the arrays from the right.
"""

import math
import re
from typing import Optional, Sequence, Tuple

import numpy as np

_EQUATION = re.compile(r'^(\.\.\.)?([a-zA-Z]+),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)$')


def parse(equation: str) -> Tuple[str, str, str]:
  """`(input_spec, kernel_spec, output_spec)` of `equation`, letters only (a leading `...`
  dropped); a ValueError in one line for anything else."""
  match = _EQUATION.match(str(equation).replace(' ', ''))
  if not match or bool(match.group(1)) != bool(match.group(4)):
    raise ValueError(f"equation must read '<input>,<kernel>-><output>' in letters, the input "
                     f"and output optionally starting with '...' (e.g. 'abc,cde->abde'); got "
                     f"{equation!r}.")
  inputs, kernel, outputs = match.group(2), match.group(3), match.group(5)
  lost = [axis for axis in kernel if axis not in inputs and axis not in outputs]
  if lost:
    raise ValueError(f'equation {equation!r}: kernel axes {lost} are in neither the input nor '
                     f'the output.')
  return inputs, kernel, outputs


def split_axes(equation: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """`(rows, columns)`: the kernel's axis positions that index the input, and the others."""
  inputs, kernel, _ = parse(equation)
  rows = tuple(i for i, axis in enumerate(kernel) if axis in inputs)
  return rows, tuple(i for i in range(len(kernel)) if i not in rows)


def matrix_shape(equation: str, kernel_shape: Sequence[int]) -> Tuple[int, int]:
  """`(rows, columns)` of the matrix a kernel of `kernel_shape` is factorised as."""
  rows, columns = split_axes(equation)
  return (math.prod(int(kernel_shape[i]) for i in rows),
          math.prod(int(kernel_shape[i]) for i in columns))


def to_matrix(kernel: np.ndarray, equation: str) -> np.ndarray:
  """The kernel `kernel_shape` as its matrix `(rows, columns)` (numpy)."""
  rows, columns = split_axes(equation)
  return np.transpose(kernel, rows + columns).reshape(matrix_shape(equation, kernel.shape))


def from_matrix(ops, matrix, equation: str, kernel_shape: Sequence[int]):
  """The inverse of `to_matrix`, with the tensor `ops` (`keras.ops` or numpy)."""
  rows, columns = split_axes(equation)
  order = rows + columns
  grouped = ops.reshape(matrix, [int(kernel_shape[i]) for i in order])
  return ops.transpose(grouped, [order.index(i) for i in range(len(order))])


def _size(axis, inputs, input_shape, outputs, output_shape):
  """The size of `axis` from the output shape's entry for it, else from the input's."""
  at = outputs.find(axis) - len(outputs)   # from the right
  if axis in outputs and -at <= len(output_shape) and output_shape[at] is not None:
    return int(output_shape[at])
  if axis in inputs:
    size = input_shape[inputs.find(axis) - len(inputs)]
    return None if size is None else int(size)
  return None


def shapes(equation: str, input_shape: Sequence[Optional[int]], output_shape,
           bias_axes: Optional[str]):
  """`(kernel_shape, bias_shape or None, full output shape)` of an `EinsumDense` with these
  arguments on inputs of `input_shape` (batch axis included), as Keras' `EinsumDense` makes
  them. `output_shape`: an int or the sizes of the output's axes after the first (None: the
  input's). A ValueError in one line when a kernel axis has no known size or a bias axis is
  not an output axis."""
  inputs, kernel, outputs = parse(equation)
  output_shape = [output_shape] if isinstance(output_shape, int) else list(output_shape)
  ellipsis = '...' in equation
  if len(input_shape) < len(inputs) or not ellipsis and len(input_shape) != len(inputs):
    raise ValueError(f'equation {equation!r} takes inputs of {"at least " if ellipsis else ""}'
                     f'{len(inputs)} axes; got shape {tuple(input_shape)}.')
  size = lambda axis: _size(axis, inputs, input_shape, outputs, output_shape)
  kernel_shape = tuple(size(axis) for axis in kernel)
  if None in kernel_shape:
    raise ValueError(f'equation {equation!r} on inputs {tuple(input_shape)} with output_shape '
                     f'{tuple(output_shape)}: kernel axis {kernel[kernel_shape.index(None)]!r} '
                     f'has no known size.')
  elided = tuple(input_shape[:len(input_shape) - len(inputs)]) if ellipsis else ()
  full = elided + tuple(size(axis) for axis in outputs)
  if not bias_axes:
    return kernel_shape, None, full
  unknown = [axis for axis in bias_axes if axis not in outputs]
  if unknown:
    raise ValueError(f'bias_axes {bias_axes!r}: {unknown} are not axes of the output '
                     f'{outputs!r} of equation {equation!r}.')
  first = min(outputs.index(axis) for axis in bias_axes)
  bias_shape = tuple(size(axis) if axis in bias_axes else 1 for axis in outputs[first:])
  return kernel_shape, bias_shape, full
