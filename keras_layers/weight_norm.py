"""Weight normalisation of a kernel's output columns (Salimans and Kingma, 2016).

`W = g * V / ||V||`: the norm is taken over the input axis of `V (in, out)`, so
output unit j's incoming weights have length `g_j` whatever direction `V`
learns. The paper's LSTM runs normalise the original, low-rank and FedPara
models alike; for a factorised kernel `V` is the composed kernel (docs/DESIGN.md,
"Weight normalisation").
"""

import math

from keras_layers.backend import keras
from keras_layers.backend import ops

EPSILON = 1e-12


def normalize(v, g):
  """`g * v / ||v||` per column.

  Args:
    v: kernel `(in, out)`.
    g: scales `(out,)`.

  Returns:
    `(in, out)`, column j of length `|g_j|` (a zero column stays zero).
  """
  return v * (g * ops.rsqrt(ops.sum(ops.square(v), axis=0) + EPSILON))


def initial_scale(kernel_shape):
  """Initial `g` for a kernel of shape `(in, out)`: `sqrt(2 in / (in + out))`.

  The expected column length of a Glorot-initialised kernel (variance
  `2 / (in + out)` per entry), so a normalised kernel starts at the plain
  layer's scale.
  """
  fan_in, fan_out = int(kernel_shape[0]), int(kernel_shape[1])
  return math.sqrt(2.0 * fan_in / (fan_in + fan_out))


def add_scale(layer, name, kernel_shape):
  """Adds the trainable scale `g (out,)` of a `kernel_shape` kernel to `layer`."""
  return layer.add_weight(
      name=name, shape=(int(kernel_shape[1]),), trainable=True,
      initializer=keras.initializers.Constant(initial_scale(kernel_shape)))
