"""Bytes that cross the network, counted from tensor shapes (SPEC section 5).

A float32 tensor of n elements costs `4 n` bytes. A tensor that the 8-bit (or
b-bit) uniform quantizer encodes costs `ceil(n b / 8)` bytes of payload plus
8 bytes for its float32 minimum and maximum; TFF's quantizer only encodes
tensors with more than `threshold` elements, the others travel as float32.
`count_clients` counts the participants inside a federated computation.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

FLOAT_BYTES = 4
RANGE_BYTES = 8  # float32 min and max sent with each quantized tensor


def tensor_bytes(shape, dtype=np.float32, quantization_bits=None, threshold=0):
  """Bytes of one tensor on the wire (see the module docstring)."""
  elements = math.prod(shape)
  if quantization_bits is not None and elements > threshold:
    return math.ceil(elements * quantization_bits / 8) + RANGE_BYTES
  return elements * np.dtype(dtype).itemsize


def structure_bytes(specs, quantization_bits=None, threshold=0):
  """Bytes of a list of `tf.TensorSpec`s on the wire."""
  return sum(tensor_bytes(tuple(s.shape), s.dtype.as_numpy_dtype, quantization_bits, threshold)
             for s in specs)


def paper_bytes(clients, transmitted_params):
  """The paper's analytic per-round figure: `2 x clients x params x 4 bytes`."""
  return 2 * clients * transmitted_params * FLOAT_BYTES


def count_clients():
  """Inside a federated computation: the number of participating clients, int32 at SERVER."""

  @tff.tensorflow.computation
  def one():
    return tf.constant(1, tf.int32)

  return tff.federated_sum(tff.federated_eval(one, tff.CLIENTS))
