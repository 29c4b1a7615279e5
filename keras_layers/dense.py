"""Dense layers with a factorised kernel: FedPara, pFedPara and low-rank."""

from typing import Any

from keras_layers import backend
from keras_layers import base
from keras_layers.backend import keras
from keras_layers.backend import ops

_register = backend.register


class _FactorizedDense(base.FactorizedLayer):
  """A densely connected layer whose kernel is composed from factors.

  `output = activation(dot(input, kernel) + bias)` with `kernel` of shape
  `(in, units)` composed by the subclass's scheme (see `FedParaDense`).

  Args:
    units: positive integer, dimensionality of the output space.
    **kwargs: the FedPara options and Keras arguments of `FactorizedLayer`
      (`gamma` / `rank` / `param_ratio`, `nonlinearity`, `factor_init`,
      `activation`, `use_bias`, regularizers, constraints, ...).

  Input shape:
    N-D tensor `(batch_size, ..., in)`; the last axis must be known.

  Output shape:
    N-D tensor `(batch_size, ..., units)`.
  """

  plain_class = keras.layers.Dense

  def __init__(self, units: int, **kwargs: Any):
    super().__init__(**kwargs)
    self.units = base.check_positive_int(units, 'units')
    self.input_spec = keras.layers.InputSpec(min_ndim=2)
    self.supports_masking = True
    self.factorization = None

  def build(self, input_shape):
    last_dim = backend.dims(input_shape)[-1]
    if last_dim is None:
      raise ValueError(
          f'{self.name}: the last dimension of the input must be known; got '
          f'input shape {backend.dims(input_shape)}.')
    self._check_rank((int(last_dim), self.units))
    self.factorization = self._add_factorization((int(last_dim), self.units))
    self._add_bias(self.units)
    self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: int(last_dim)})
    self.built = True

  def composed_kernel(self):
    """The kernel `(in, units)` composed from the current factors."""
    return self.factorization.compose()

  @backend.no_autograph
  def call(self, inputs):
    # As Keras' Dense / Conv: integer (or other) inputs are cast to the compute dtype.
    inputs = ops.cast(inputs, self.compute_dtype)
    kernel = self._recorded(self.composed_kernel(), self.factorization)
    outputs = backend.dense(inputs, kernel)
    if self.bias is not None:
      outputs = backend.bias_add(outputs, self.bias)
    return self.activation(outputs)

  def compute_output_shape(self, input_shape):
    return backend.output_shape(backend.dims(input_shape)[:-1] + (self.units,))

  def get_config(self):
    config = super().get_config()
    config['units'] = self.units
    return config

  @classmethod
  def from_plain(cls, layer, **options):
    """A twin of the plain Keras `Dense` `layer` with `options`."""
    config = layer.get_config()
    return cls(config['units'], **cls.common_kwargs_from_plain(config), **options)

  def to_plain(self):
    """An unbuilt Keras `Dense` with this layer's arguments."""
    return keras.layers.Dense(self.units, **self.common_plain_kwargs())


@_register
class FedParaDense(_FactorizedDense):
  """Dense layer with a FedPara low-rank Hadamard kernel (Propositions 1-2).

  `W = (X1 Y1^T) * (X2 Y2^T)` (element-wise product), stored in Keras layout
  `(in, units)`, with factors `x1, x2 (units, R)` and `y1, y2 (in, R)`; with
  `nonlinearity='tanh'`, `W = tanh(X1 Y1^T) * tanh(X2 Y2^T)`. The rank of `W`
  can reach `R^2` with `2R(in + units)` parameters (plus bias), where a plain
  low-rank kernel of that size is capped at rank `2R`.

  >>> layer = FedParaDense(64, rank=8)
  >>> layer(tf.zeros((2, 128))).shape
  TensorShape([2, 64])
  >>> layer.count_params()  # 2 * 8 * (128 + 64) + 64
  3136

  Args:
    units: positive integer, dimensionality of the output space.
    gamma: float in [0, 1]: `R = ceil((1-gamma) r_min + gamma r_max)`.
    rank: explicit R in `[1, min(in, units)]` (instead of gamma).
    param_ratio: target fraction of the plain kernel's parameters.
    nonlinearity: `None` or `'tanh'`.
    factor_init: see `FactorizedLayer`; by default the composed kernel has
      the variance of Keras' Glorot-uniform kernel.
    **kwargs: `activation`, `use_bias`, `bias_initializer`, `kernel_regularizer`
      (on the composed kernel), `factor_regularizer`, `bias_regularizer`,
      `activity_regularizer`, `factor_constraint`, `bias_constraint`, and the
      base Layer arguments.

  Input shape:
    N-D tensor `(batch_size, ..., in)`.

  Output shape:
    N-D tensor `(batch_size, ..., units)`.
  """

  scheme = 'fedpara'


@_register
class PFedParaDense(_FactorizedDense):
  """Dense layer with the personalised pFedPara kernel `W = W1 * (W2 + 1)`.

  `W1 = X1 Y1^T` is global (factors `x1`, `y1`, averaged by the server) and
  `W2 = X2 Y2^T` is local (factors `x2_local`, `y2_local`, kept on the client;
  see `local_weights`). With `W2 = 0` it is the global weight. Same parameter
  count as `FedParaDense`; only half of it (the global factors) travels.

  >>> layer = PFedParaDense(64, rank=8)
  >>> _ = layer(tf.zeros((2, 128)))
  >>> [v.name.split('/')[-1] for v in layer.local_weights]
  ['x2_local:0', 'y2_local:0']

  Args, Input shape, Output shape: as `FedParaDense`.
  """

  scheme = 'pfedpara'


@_register
class LowRankDense(_FactorizedDense):
  """Dense layer with a conventional low-rank kernel `W = X Y^T` (baseline).

  Factors `x (units, R')` and `y (in, R')`; `R'(in + units)` parameters and
  rank at most `R'`. An explicit `rank` sets `R'` directly; `gamma` or
  `param_ratio` set `R' = 2R` with `R` the FedPara rank at that setting, so the
  parameter count equals `FedParaDense`'s exactly.

  >>> LowRankDense(64, gamma=0.5)(tf.zeros((1, 128))).shape
  TensorShape([1, 64])

  Args, Input shape, Output shape: as `FedParaDense`.
  """

  scheme = 'lowrank'
