"""Bytes that cross the network, counted from tensor shapes (docs/DESIGN.md, "Communication accounting").

A float32 tensor of n elements costs `4 n` bytes. A tensor that TFF's b-bit
uniform quantizer (`EncodedSumFactory.quantize_above_threshold`) encodes costs
`4 ceil(n b / 28)` bytes of payload, because its bitpacking stage packs 28 bits
into each int32 (so that each packed value serialises to 4 bytes), plus 8 bytes
for the float32 minimum and maximum it sends with the tensor. The quantizer only
encodes tensors with more than `threshold` elements; the others travel as float32.
`count_clients` counts the participants inside a federated computation.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

FLOAT_BYTES = 4
RANGE_BYTES = 8  # float32 min and max sent with each quantized tensor
PACKED_BITS = 28  # bits TFF's bitpacking stage stores in each 4-byte int32


def tensor_bytes(shape, dtype=np.float32, quantization_bits=None, threshold=0):
  """Bytes of one tensor on the wire (see the module docstring)."""
  elements = math.prod(shape)
  if quantization_bits is not None and elements > threshold:
    return 4 * math.ceil(elements * quantization_bits / PACKED_BITS) + RANGE_BYTES
  return elements * np.dtype(dtype).itemsize


def structure_bytes(specs, quantization_bits=None, threshold=0):
  """Bytes of a list of `tf.TensorSpec`s on the wire."""
  return sum(tensor_bytes(tuple(s.shape), s.dtype.as_numpy_dtype, quantization_bits, threshold)
             for s in specs)


def broadcast_bytes(clients, specs):
  """Bytes a broadcast of float `specs` (`tf.TensorSpec`s) to `clients` clients sends, as an
  int64 tensor (`clients` a TF int32): the download count of every round and distributor."""
  return tf.cast(clients, tf.int64) * structure_bytes(specs)


def paper_bytes(clients, transmitted_params):
  """The paper's analytic per-round figure: `2 x clients x params x 4 bytes`."""
  return 2 * clients * transmitted_params * FLOAT_BYTES


def count_clients():
  """Inside a federated computation: the number of participating clients, int32 at SERVER."""

  @tff.tensorflow.computation
  def one():
    return tf.constant(1, tf.int32)

  return tff.federated_sum(tff.federated_eval(one, tff.CLIENTS))
