"""Convolution layers with a factorised kernel: FedPara, pFedPara and low-rank.

One base class owns the convolution arguments (strides, padding, dilation,
data_format, groups); the kernel comes from `factors.KernelFactorization` in
the Tucker-2 form of Proposition 3.
"""

from typing import Any, Optional, Sequence, Union

import numbers

from keras_layers import backend
from keras_layers import base
from keras_layers import ranks
from keras_layers.backend import keras
from keras_layers.backend import ops

_register = backend.register


def _normalize_tuple(value, n, name):
  """`value` (int or sequence of n positive ints) as a tuple of n ints."""
  items = (value,) * n if isinstance(value, numbers.Integral) else value
  try:
    items = tuple(items)
  except TypeError:
    items = ()
  if len(items) != n or not all(ranks.is_positive_int(v) for v in items):
    raise ValueError(
        f'{name} must be a positive integer or a tuple of {n} positive '
        f'integers; got {value!r}.')
  return tuple(int(v) for v in items)


def _output_length(length, kernel, padding, stride, dilation):
  if length is None:
    return None
  effective = (kernel - 1) * dilation + 1
  if padding == 'valid':
    length = length - effective + 1
  return (length + stride - 1) // stride


class _FactorizedConv(base.FactorizedLayer):
  """N-D convolution (channels_last) whose kernel is composed from factors.

  Kernel layout `(k1, ..., kd, I, O)`; each term is the Tucker-2 product
  `W[a, b, i, o] = sum_{p,q} t[p, q, a, b] x[o, p] y[i, q]` with
  `t (R, R, k1, ..., kd)`, `x (O, R)`, `y (I, R)`.

  Args:
    filters: positive integer, number of output channels O.
    kernel_size: int or tuple of d ints.
    strides: int or tuple of d ints.
    padding: `'valid'` or `'same'` (and `'causal'` for 1-D).
    data_format: `None` or `'channels_last'` (the only supported layout).
    dilation_rate: int or tuple of d ints.
    groups: must be 1 (grouped convolutions are not factorised).
    **kwargs: the FedPara options and Keras arguments of `FactorizedLayer`.

  Input shape:
    `(batch_size, s1, ..., sd, I)`.

  Output shape:
    `(batch_size, s1', ..., sd', filters)`.
  """

  spatial_rank = None  # set by subclasses
  plain_class = None

  def __init__(self, filters: int, kernel_size: Union[int, Sequence[int]],
               strides: Union[int, Sequence[int]] = 1, padding: str = 'valid',
               data_format: Optional[str] = None, dilation_rate: Union[int, Sequence[int]] = 1,
               groups: int = 1, **kwargs: Any):
    super().__init__(**kwargs)
    n = self.spatial_rank
    self.filters = base.check_positive_int(filters, 'filters')
    self.kernel_size = _normalize_tuple(kernel_size, n, 'kernel_size')
    self.strides = _normalize_tuple(strides, n, 'strides')
    self.dilation_rate = _normalize_tuple(dilation_rate, n, 'dilation_rate')
    paddings = ('valid', 'same', 'causal') if n == 1 else ('valid', 'same')
    if not isinstance(padding, str) or padding.lower() not in paddings:
      raise ValueError(f'padding must be one of {paddings}; got {padding!r}.')
    self.padding = padding.lower()
    if data_format not in (None, 'channels_last'):
      raise ValueError(
          f"data_format must be 'channels_last' (or None); got {data_format!r}.")
    self.data_format = 'channels_last'
    if groups != 1:
      raise ValueError(f'groups must be 1 (grouped convolutions are not '
                       f'supported); got {groups!r}.')
    self.groups = 1
    if max(self.strides) > 1 and max(self.dilation_rate) > 1:
      raise ValueError(
          f'strides > 1 cannot be combined with dilation_rate > 1; got strides='
          f'{self.strides}, dilation_rate={self.dilation_rate}.')
    self.input_spec = keras.layers.InputSpec(min_ndim=n + 2)
    self.factorization = None

  def _check_valid_padding(self, input_shape):
    if self.padding != 'valid':
      return
    for axis, (size, k, d) in enumerate(zip(input_shape[1:-1], self.kernel_size,
                                            self.dilation_rate)):
      effective = (k - 1) * d + 1
      if size is not None and effective > size:
        raise ValueError(
            f'{self.name}: kernel_size {self.kernel_size} (dilation '
            f'{self.dilation_rate}) spans {effective} on spatial axis {axis}, '
            f'larger than the input size {size} allowed by padding "valid".')

  def build(self, input_shape):
    input_shape = backend.dims(input_shape)
    if len(input_shape) != self.spatial_rank + 2:
      raise ValueError(
          f'{self.name}: expected input of rank {self.spatial_rank + 2} '
          f'(batch, spatial..., channels); got shape {input_shape}.')
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f'{self.name}: the channel dimension of the input must '
                       f'be known; got input shape {input_shape}.')
    self._check_valid_padding(input_shape)
    kernel_shape = self.kernel_size + (int(channels), self.filters)
    self._check_rank(kernel_shape)
    self.factorization = self._add_factorization(kernel_shape)
    self._add_bias(self.filters)
    self.input_spec = keras.layers.InputSpec(
        ndim=self.spatial_rank + 2, axes={-1: int(channels)})
    self.built = True

  def composed_kernel(self):
    """The kernel `(k1, ..., kd, I, filters)` composed from the factors."""
    return self.factorization.compose()

  @backend.no_autograph
  def call(self, inputs):
    # As Keras' Dense / Conv: integer (or other) inputs are cast to the compute dtype.
    inputs = ops.cast(inputs, self.compute_dtype)
    kernel = self._recorded(self.composed_kernel(), self.factorization)
    padding = self.padding
    if padding == 'causal':
      left = (self.kernel_size[0] - 1) * self.dilation_rate[0]
      inputs = ops.pad(inputs, [[0, 0], [left, 0], [0, 0]])
      padding = 'valid'
    outputs = ops.conv(inputs, kernel, strides=self.strides, padding=padding,
                       data_format='channels_last', dilation_rate=self.dilation_rate)
    if self.bias is not None:
      outputs = backend.bias_add(outputs, self.bias)
    return self.activation(outputs)

  def compute_output_shape(self, input_shape):
    input_shape = list(backend.dims(input_shape))
    padding = 'same' if self.padding == 'causal' else self.padding
    spatial = [_output_length(s, k, padding, st, d) for s, k, st, d in zip(
        input_shape[1:-1], self.kernel_size, self.strides, self.dilation_rate)]
    return backend.output_shape([input_shape[0]] + spatial + [self.filters])

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  strides=self.strides, padding=self.padding,
                  data_format=self.data_format,
                  dilation_rate=self.dilation_rate, groups=self.groups)
    return config

  _CONV_ARGS = ('filters', 'kernel_size', 'strides', 'padding', 'data_format',
                'dilation_rate', 'groups')

  @classmethod
  def from_plain(cls, layer, **options):
    """A twin of the plain Keras convolution `layer` with `options`."""
    config = layer.get_config()
    conv_args = {k: config[k] for k in cls._CONV_ARGS if k in config}
    return cls(**conv_args, **cls.common_kwargs_from_plain(config), **options)

  def to_plain(self):
    """An unbuilt plain Keras convolution with this layer's arguments."""
    config = self.get_config()
    conv_args = {k: config[k] for k in self._CONV_ARGS}
    return self.plain_class(**conv_args, **self.common_plain_kwargs())


class _Conv2D(_FactorizedConv):
  spatial_rank = 2
  plain_class = keras.layers.Conv2D


class _Conv1D(_FactorizedConv):
  spatial_rank = 1
  plain_class = keras.layers.Conv1D


@_register
class FedParaConv2D(_Conv2D):
  """2-D convolution with a FedPara kernel (Tucker-2 form, Proposition 3).

  `W = (T1 x1 X1 x2 Y1) * (T2 x1 X2 x2 Y2)`, element-wise
  `W[a, b, i, o] = (sum_{pq} t1[p,q,a,b] x1[o,p] y1[i,q]) *
  (sum_{pq} t2[p,q,a,b] x2[o,p] y2[i,q])`, Keras layout `(k1, k2, I, O)`.
  Factors `x1, x2 (O, R)`, `y1, y2 (I, R)`, `t1, t2 (R, R, k1, k2)`:
  `2R(O + I + R k1 k2)` parameters plus bias. With `nonlinearity='tanh'`
  each term goes through tanh before the product.

  >>> layer = FedParaConv2D(256, 3, gamma=0.1, padding='same', use_bias=False)
  >>> layer(tf.zeros((1, 8, 8, 256))).shape
  TensorShape([1, 8, 8, 256])
  >>> layer.ranks, layer.count_params()  # r_min 16, r_max 154 -> R 30
  ([30], 46920)

  Args:
    filters, kernel_size, strides, padding, data_format, dilation_rate, groups:
      as `tf.keras.layers.Conv2D` (channels_last and groups=1 only).
    gamma / rank / param_ratio, nonlinearity, factor_init, activation,
      use_bias and regularizers / constraints: see `FactorizedLayer`.

  Input shape:
    `(batch_size, rows, cols, I)`.

  Output shape:
    `(batch_size, new_rows, new_cols, filters)`.
  """

  scheme = 'fedpara'


@_register
class PFedParaConv2D(_Conv2D):
  """2-D convolution with the pFedPara kernel `W = W1 * (W2 + 1)`.

  `W1 = T1 x1 X1 x2 Y1` is global (`x1`, `y1`, `t1`); `W2 = T2 x1 X2 x2 Y2` is
  local (`x2_local`, `y2_local`, `t2_local`, see `local_weights`). Same size
  as `FedParaConv2D`; only the global half travels.

  Args, Input shape, Output shape: as `FedParaConv2D`.
  """

  scheme = 'pfedpara'


@_register
class LowRankConv2D(_Conv2D):
  """2-D convolution with a conventional Tucker-2 low-rank kernel (baseline).

  `W = T x1 X x2 Y` with `t (R', R', k1, k2)`, `x (O, R')`, `y (I, R')`:
  `R'(O + I + R' k1 k2)` parameters. An explicit `rank` sets `R'`; `gamma` or
  `param_ratio` pick the largest `R'` whose count does not exceed the
  `FedParaConv2D` at that setting.

  Args, Input shape, Output shape: as `FedParaConv2D`.
  """

  scheme = 'lowrank'


@_register
class FedParaConv1D(_Conv1D):
  """1-D convolution with a FedPara kernel; as `FedParaConv2D` with `t (R, R, k)`.

  Args: as `tf.keras.layers.Conv1D` (padding 'valid', 'same' or 'causal') plus
    the FedPara options of `FactorizedLayer`.

  Input shape:
    `(batch_size, steps, I)`.

  Output shape:
    `(batch_size, new_steps, filters)`.
  """

  scheme = 'fedpara'


@_register
class PFedParaConv1D(_Conv1D):
  """1-D convolution with the pFedPara kernel `W = W1 * (W2 + 1)`.

  Args, Input shape, Output shape: as `FedParaConv1D`.
  """

  scheme = 'pfedpara'


@_register
class LowRankConv1D(_Conv1D):
  """1-D convolution with a Tucker-2 low-rank kernel (baseline).

  Args, Input shape, Output shape: as `FedParaConv1D`.
  """

  scheme = 'lowrank'
