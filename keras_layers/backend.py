"""The Keras the layers run on, and the tensor operations their math uses.

One code base for two Keras generations (docs/DESIGN.md, "Keras 2 and Keras 3"):

* Keras 3 (the `keras` package 3.x, on TensorFlow, JAX or PyTorch): `keras` is
  that package and `ops` is `keras.ops`, so the layers run on any backend;
* Keras 2 (`tf.keras` of TensorFlow 2.14, the version TFF 0.87 pins): `keras`
  is `tf.keras` and `ops` offers the same names, implemented with TensorFlow.

The layers' math calls only `ops.<name>` for the names below. Which Keras is
used follows the installed `keras` package (3.x: Keras 3; else `tf.keras`);
importing this module configures nothing.
"""

import contextlib
import importlib
import types

import numpy as np


def _keras_major():
  try:
    keras_package = importlib.import_module('keras')
  except ImportError:
    return 2
  return int(str(getattr(keras_package, '__version__', '2')).split('.')[0])


IS_KERAS_3 = _keras_major() >= 3


def _tensorflow_ops(tf):
  """The subset of `keras.ops` the layers use, on TensorFlow (for Keras 2)."""

  def conv(inputs, kernel, strides=1, padding='valid', data_format=None, dilation_rate=1):
    del data_format   # channels_last only
    return tf.nn.convolution(inputs, kernel, strides=strides, padding=padding.upper(),
                             dilations=dilation_rate)

  def unstack(x, num=None, axis=0):
    return tf.unstack(x, num=num, axis=axis)

  return types.SimpleNamespace(
      abs=tf.abs, cast=tf.cast, concatenate=lambda xs, axis=0: tf.concat(xs, axis), conv=conv,
      convert_to_numpy=lambda x: tf.convert_to_tensor(x).numpy(),
      einsum=tf.einsum, expand_dims=tf.expand_dims, matmul=tf.matmul,
      max=lambda x, axis=None, keepdims=False: tf.reduce_max(x, axis=axis, keepdims=keepdims),
      ones=tf.ones,
      ones_like=tf.ones_like, pad=tf.pad, reshape=tf.reshape, rsqrt=tf.math.rsqrt,
      shape=tf.shape, split=lambda x, n, axis=0: tf.split(x, n, axis=axis), square=tf.square,
      stack=lambda xs, axis=0: tf.stack(xs, axis=axis),
      sum=lambda x, axis=None, keepdims=False: tf.reduce_sum(x, axis=axis, keepdims=keepdims),
      tanh=tf.tanh, tensordot=tf.tensordot,
      transpose=lambda x, axes=None: tf.transpose(x, axes), unstack=unstack, where=tf.where,
      zeros=tf.zeros)


if IS_KERAS_3:
  import keras  # pylint: disable=g-import-not-at-top
  from keras import ops  # pylint: disable=g-import-not-at-top
else:
  import tensorflow as _tf  # pylint: disable=g-import-not-at-top
  keras = _tf.keras
  ops = _tensorflow_ops(_tf)


def keras_tensorflow():
  """TensorFlow, on Keras 2 (where the layers' training helpers use its GradientTape)."""
  return _tf


def no_autograph(function):
  """`function`, left as it is by TensorFlow's AutoGraph, for a layer's `call` without
  tensor-dependent Python control flow. AutoGraph otherwise rewrites the call and every function
  it calls, and routes each of their calls through its own dispatch whenever a graph traces the
  layer (a TFF round traces its model several times). Keras 2 only (TFF's Keras): unchanged on
  Keras 3."""
  if IS_KERAS_3:
    return function
  tf = importlib.import_module('tensorflow')
  # As a TensorFlow decorator, so that Keras still reads `call`'s own arguments (`training`).
  return tf.__internal__.decorator.make_decorator(
      function, tf.autograph.experimental.do_not_convert(function))


def building_graph() -> bool:
  """True while TensorFlow traces a graph (a TFF computation, a `tf.function`): its variables
  hold no values there, to read or to set, until the graph runs."""
  if IS_KERAS_3 and keras.backend.backend() != 'tensorflow':
    return False
  tf = importlib.import_module('tensorflow')
  return not tf.executing_eagerly()


def register(cls):
  """Registers a layer class for Keras serialisation under the package `fedpara`."""
  return keras.utils.register_keras_serializable(package='fedpara')(cls)


def seed_generator(seed=None):
  """The random state dropout masks are drawn from: a `keras.random.SeedGenerator` on Keras 3
  (as Keras' own RNN cells hold), the integer op seed (or None) on Keras 2."""
  return keras.random.SeedGenerator(seed) if IS_KERAS_3 else seed


def dropout_mask(like, rate, generator):
  """Ones shaped like `like`, dropped with probability `rate` and scaled by `1 / (1 - rate)`
  (Keras' dropout), drawn from `generator` (`seed_generator`)."""
  if IS_KERAS_3:
    return keras.random.dropout(ops.ones_like(like), rate=rate, seed=generator)
  return _tf.nn.dropout(_tf.ones_like(like), rate=rate, seed=generator)


def sublayers(layer):
  """Every layer nested in `layer` (not `layer` itself), each once, parents before children:
  the layers of a model, of a nested model, and those a wrapper (`Bidirectional`,
  `TimeDistributed`) or an RNN holds (its cell). Keras 2: `layer.submodules`; Keras 3 has no
  `submodules` and walks its layer tracker."""
  if IS_KERAS_3:
    return list(layer._flatten_layers(include_self=False, recursive=True))  # pylint: disable=protected-access
  layers = [m for m in layer.submodules if isinstance(m, keras.layers.Layer)]
  # Keras 2's Bidirectional also tracks the layer it was given, which it copies and never
  # runs: leave that one (and what it holds) out.
  unused = set()
  for m in layers:
    if isinstance(m, keras.layers.Bidirectional):
      unused.update(id(s) for s in [m.layer, *m.layer.submodules])
      unused -= {id(s) for s in [m.forward_layer, m.backward_layer, *m.forward_layer.submodules,
                                 *m.backward_layer.submodules]}
  return [m for m in layers if id(m) not in unused]


def replace_sublayers(holder, attributes):
  """Sets `holder.<attribute> = layer` for each `(attribute, layer)` of `attributes` (in order),
  where each attribute holds a sublayer the holder tracks, so that the holder tracks the new
  layers in the old ones' place and no longer the old ones (its `weights` and `sublayers` then
  list the new layers' variables in the old ones' order). Keras 3 swaps them in its layer
  tracker; Keras 2 untracks an attribute's layer when the attribute is deleted and tracks what
  is set in order, so every attribute is deleted first and set again."""
  if IS_KERAS_3:
    tracker = holder._tracker   # pylint: disable=protected-access
    for attribute, layer in attributes:
      tracker.replace_tracked_value('layers', getattr(holder, attribute), layer)
      setattr(holder, attribute, layer)
    return
  for attribute, _ in attributes:
    delattr(holder, attribute)
  for attribute, layer in attributes:
    setattr(holder, attribute, layer)


def dims(input_shape):
  """`input_shape` (a tuple, list or `tf.TensorShape`) as a tuple of ints and None."""
  if hasattr(input_shape, 'as_list'):
    input_shape = input_shape.as_list()
  return tuple(None if d is None else int(d) for d in input_shape)


def output_shape(shape):
  """A shape to return from `compute_output_shape`: a tuple on Keras 3, a `TensorShape` on 2."""
  shape = dims(shape)
  return shape if IS_KERAS_3 else _tf.TensorShape(shape)


def to_numpy(value):
  """A tensor or variable as a numpy array."""
  return np.asarray(ops.convert_to_numpy(value))


def stack(values):
  """`values` (tensors or variables of one shape) stacked on a new first axis.

  On Keras 3 as a concatenation: its TensorFlow backend's `stack` fails on variables inside a
  layer's `call` (Keras 3.15 with TensorFlow 2.21).
  """
  if IS_KERAS_3:
    return ops.concatenate([ops.expand_dims(v, 0) for v in values], axis=0)
  return ops.stack(values)


def matmul_transpose_b(a, b):
  """`a @ b^T` over the last two axes, batched over the leading ones."""
  if IS_KERAS_3:
    return ops.matmul(a, ops.swapaxes(b, -1, -2))
  return _tf.matmul(a, b, transpose_b=True)


def bias_add(x, bias):
  """`x + bias` over the last axis (`tf.nn.bias_add` on Keras 2)."""
  return ops.add(x, bias) if IS_KERAS_3 else _tf.nn.bias_add(x, bias)


def dense(inputs, kernel):
  """`inputs (..., in)` times `kernel (in, out)`."""
  rank = len(inputs.shape)
  if rank == 2:
    return ops.matmul(inputs, kernel)
  return ops.tensordot(inputs, kernel, [[rank - 1], [0]])


def name_scope(name):
  """TensorFlow's name scope on Keras 2 (the variables' names depend on it); none on Keras 3."""
  return contextlib.nullcontext() if IS_KERAS_3 else _tf.name_scope(name)


def rnn(step, inputs, initial_states, go_backwards=False, mask=None, unroll=False,
        return_sequences=False):
  """Runs `step(x_t, states) -> (output, new states)` over the time axis of `inputs`.

  Args:
    step: the cell step.
    inputs: `(batch, time, features)`.
    initial_states: list of `(batch, units)` tensors.
    go_backwards: process the sequence in reverse (outputs in processing order).
    mask: `(batch, time)` booleans or None (Keras 2 only).
    unroll: unroll the loop (Keras 2 only; Keras 3 scans).
    return_sequences: also return every step's output.

  Returns:
    `(last output, outputs (batch, time, units) or the last output, final states)`.
  """
  if not IS_KERAS_3:
    return _tf.keras.backend.rnn(
        step, inputs, initial_states, go_backwards=go_backwards, mask=mask, unroll=unroll,
        input_length=inputs.shape[1], zero_output_for_mask=return_sequences,
        return_all_outputs=return_sequences)
  if mask is not None:
    raise ValueError('a masked sequence (e.g. from Embedding(mask_zero=True)) is supported by '
                     'the factorised LSTM layers on Keras 2 only; got a mask on Keras 3.')
  time_major = ops.transpose(inputs, [1, 0, 2])
  if go_backwards:
    time_major = ops.flip(time_major, axis=0)

  def scan_step(states, x_t):
    output, new_states = step(x_t, states)
    return list(new_states), output

  if keras.backend.backend() == 'tensorflow':
    # Keras 3.15's `ops.scan` fails on TensorFlow 2.21 (its TensorArray writes come back
    # wrapped); the sequence length is static, so the loop is unrolled there.
    states, steps = list(initial_states), []
    for t in range(time_major.shape[0]):
      states, output = scan_step(states, time_major[t])
      steps.append(output)
    outputs = ops.stack(steps)
  else:
    states, outputs = ops.scan(scan_step, list(initial_states), time_major)
  last = outputs[-1]
  outputs = ops.transpose(outputs, [1, 0, 2]) if return_sequences else last
  return last, outputs, states
