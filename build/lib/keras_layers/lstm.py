"""LSTM with factorised input and recurrent kernels: FedPara, pFedPara, low-rank.

The cells work inside `tf.keras.layers.RNN` like `tf.keras.layers.LSTMCell`
(they then compose their kernels at every time step). The `*LSTM` layers
compose both kernels once per call and run the cell's step with them over the
sequence, so a sequence costs one composition.
"""

import tensorflow as tf

from keras_layers import base

_register = tf.keras.utils.register_keras_serializable(package='fedpara')


class _FactorizedLSTMCell(base.FactorizedLayer):
  """LSTM cell whose kernels `(in, 4H)` and `(H, 4H)` are composed from factors.

  With `z = x K + h U + b` split into gates `i, f, g, o` (Keras order):
  `c' = sigma(f) c + sigma(i) tanh(g)`, `h' = sigma(o) tanh(c')`, exactly as
  `tf.keras.layers.LSTMCell`. Input-kernel factors are prefixed `kernel_`,
  recurrent-kernel factors `recurrent_`. With `gamma` or `param_ratio` each
  kernel gets the rank its own shape gives; an explicit `rank` is used for both.

  Args:
    units: positive integer H.
    activation: activation of the candidate and the output (default tanh).
    recurrent_activation: activation of the gates (default sigmoid).
    use_bias: whether to add a bias.
    unit_forget_bias: add 1 to the forget-gate bias at init (as Keras).
    **kwargs: the FedPara options of `FactorizedLayer`. `kernel_regularizer`
      applies to both composed kernels.

  Call arguments:
    inputs: `(batch, in)`. states: `[h (batch, H), c (batch, H)]`.
    constants: optional `[kernel, recurrent_kernel]` already composed.
  """

  def __init__(self, units, activation='tanh', recurrent_activation='sigmoid',
               use_bias=True, unit_forget_bias=True, **kwargs):
    super().__init__(activation=activation, use_bias=use_bias, **kwargs)
    self.units = base.check_positive_int(units, 'units')
    self.recurrent_activation = tf.keras.activations.get(recurrent_activation)
    self.unit_forget_bias = bool(unit_forget_bias)
    self.state_size = [self.units, self.units]
    self.output_size = self.units
    self.kernel_factorization = None
    self.recurrent_factorization = None

  def _bias_initializer(self, shape, dtype=None, **kwargs):
    del shape, kwargs
    if not self.unit_forget_bias:
      return self.bias_initializer((4 * self.units,), dtype=dtype)
    return tf.concat([self.bias_initializer((self.units,), dtype=dtype),
                      tf.ones((self.units,), dtype=dtype),
                      self.bias_initializer((2 * self.units,), dtype=dtype)], 0)

  def build(self, input_shape):
    in_dim = tf.TensorShape(input_shape)[-1]
    if in_dim is None:
      raise ValueError(f'{self.name}: the feature dimension of the input must '
                       f'be known; got input shape {tf.TensorShape(input_shape)}.')
    gates = 4 * self.units
    self.kernel_factorization = self._add_factorization((int(in_dim), gates), 'kernel_')
    self.recurrent_factorization = self._add_factorization((self.units, gates),
                                                           'recurrent_')
    self._add_bias(gates, initializer=self._bias_initializer)
    self.built = True

  def composed_kernel(self):
    """The input kernel `(in, 4 units)` composed from its factors."""
    return self.kernel_factorization.compose()

  def composed_recurrent_kernel(self):
    """The recurrent kernel `(units, 4 units)` composed from its factors."""
    return self.recurrent_factorization.compose()

  def call(self, inputs, states, training=None, constants=None):
    del training
    h, c = states[0], states[1]
    if constants:
      kernel, recurrent_kernel = constants
    else:
      kernel, recurrent_kernel = self.composed_kernel(), self.composed_recurrent_kernel()
    z = tf.matmul(inputs, kernel) + tf.matmul(h, recurrent_kernel)
    if self.bias is not None:
      z = tf.nn.bias_add(z, self.bias)
    z_i, z_f, z_g, z_o = tf.split(z, 4, axis=-1)
    c = (self.recurrent_activation(z_f) * c
         + self.recurrent_activation(z_i) * self.activation(z_g))
    h = self.recurrent_activation(z_o) * self.activation(c)
    return h, [h, c]

  def get_initial_state(self, inputs=None, batch_size=None, dtype=None):
    if inputs is not None:
      batch_size, dtype = tf.shape(inputs)[0], inputs.dtype
    return [tf.zeros((batch_size, self.units), dtype=dtype or self.compute_dtype)
            for _ in range(2)]

  def get_config(self):
    config = super().get_config()
    config.update(
        units=self.units,
        recurrent_activation=tf.keras.activations.serialize(self.recurrent_activation),
        unit_forget_bias=self.unit_forget_bias)
    return config


@_register
class FedParaLSTMCell(_FactorizedLSTMCell):
  """LSTM cell whose two kernels are FedPara kernels `(X1 Y1^T) * (X2 Y2^T)`.

  Factors `kernel_x1, kernel_x2 (4H, R)`, `kernel_y1, kernel_y2 (in, R)`,
  `recurrent_x1, recurrent_x2 (4H, R')`, `recurrent_y1, recurrent_y2 (H, R')`:
  `2R(in + 4H) + 2R'(H + 4H)` parameters plus the `4H` bias.

  >>> rnn = tf.keras.layers.RNN(FedParaLSTMCell(16, rank=4))
  >>> rnn(tf.zeros((2, 5, 8))).shape
  TensorShape([2, 16])

  Args, call arguments: see `_FactorizedLSTMCell`.
  """

  scheme = 'fedpara'


@_register
class PFedParaLSTMCell(_FactorizedLSTMCell):
  """LSTM cell with pFedPara kernels `W1 * (W2 + 1)`; `*_x2_local`, `*_y2_local` stay local.

  Args, call arguments: see `_FactorizedLSTMCell`.
  """

  scheme = 'pfedpara'


@_register
class LowRankLSTMCell(_FactorizedLSTMCell):
  """LSTM cell with conventional low-rank kernels `X Y^T` (baseline).

  Args, call arguments: see `_FactorizedLSTMCell`.
  """

  scheme = 'lowrank'


_LAYER_KWARGS = ('name', 'dtype', 'trainable', 'input_shape', 'batch_input_shape',
                 'batch_size', 'activity_regularizer')
_RNN_ARGS = ('return_sequences', 'return_state', 'go_backwards', 'unroll')
_CELL_PLAIN_ARGS = ('units', 'activation', 'recurrent_activation', 'use_bias',
                    'unit_forget_bias', 'bias_initializer', 'kernel_regularizer',
                    'bias_regularizer', 'bias_constraint')
# Arguments a factorised LSTM shares, with the same meaning, with tf.keras.layers.LSTM.
_SHARED_PLAIN_ARGS = _CELL_PLAIN_ARGS + _RNN_ARGS + _LAYER_KWARGS
# Arguments of tf.keras.layers.LSTM that have no factorised counterpart, with
# the only value we accept.
_UNSUPPORTED_PLAIN_ARGS = {'dropout': 0.0, 'recurrent_dropout': 0.0, 'time_major': False,
                           'stateful': False,
                           'recurrent_regularizer': None, 'kernel_constraint': None,
                           'recurrent_constraint': None}


class _FactorizedLSTM(tf.keras.layers.Layer):
  """`tf.keras.layers.LSTM`-compatible layer over a factorised cell.

  Composes the input and recurrent kernels once per call, then runs the
  recurrence with `tf.keras.backend.rnn` (the loop Keras' own LSTM uses).

  Args:
    units: positive integer H.
    return_sequences, return_state, go_backwards, unroll: as
      `tf.keras.layers.LSTM`.
    **kwargs: the cell's arguments (`activation`, `recurrent_activation`,
      `use_bias`, `unit_forget_bias`, FedPara options, regularizers) and the
      base Layer arguments (`name`, `dtype`, ...). Dropout and `stateful` are
      not supported.

  Input shape:
    `(batch, timesteps, features)`.

  Output shape:
    `(batch, units)`, or `(batch, timesteps, units)` with `return_sequences`;
    with `return_state`, followed by the final `h` and `c`.
  """

  cell_class = None
  plain_class = tf.keras.layers.LSTM

  def __init__(self, units, return_sequences=False, return_state=False,
               go_backwards=False, unroll=False, **kwargs):
    layer_kwargs = {k: kwargs.pop(k) for k in _LAYER_KWARGS if k in kwargs}
    super().__init__(**layer_kwargs)
    self.units = base.check_positive_int(units, 'units')
    self.return_sequences = bool(return_sequences)
    self.return_state = bool(return_state)
    self.go_backwards = bool(go_backwards)
    self.unroll = bool(unroll)
    self.cell = self.cell_class(units, name='cell', dtype=layer_kwargs.get('dtype'),
                                **kwargs)
    self.input_spec = tf.keras.layers.InputSpec(ndim=3)
    self.supports_masking = True

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    with tf.name_scope(self.cell.name):
      self.cell.build(tf.TensorShape([input_shape[0], input_shape[-1]]))
    self.built = True

  def composed_kernel(self):
    """The input kernel `(features, 4 units)`."""
    return self.cell.composed_kernel()

  def composed_recurrent_kernel(self):
    """The recurrent kernel `(units, 4 units)`."""
    return self.cell.composed_recurrent_kernel()

  def call(self, inputs, mask=None, training=None, initial_state=None):
    constants = [self.cell.composed_kernel(), self.cell.composed_recurrent_kernel()]
    if initial_state is None:
      initial_state = self.cell.get_initial_state(inputs=inputs[:, 0])

    def step(x_t, states):
      return self.cell.call(x_t, states, training=training, constants=constants)

    last, outputs, states = tf.keras.backend.rnn(
        step, inputs, list(initial_state), go_backwards=self.go_backwards,
        mask=mask, unroll=self.unroll, input_length=inputs.shape[1],
        zero_output_for_mask=self.return_sequences,
        return_all_outputs=self.return_sequences)
    output = outputs if self.return_sequences else last
    return [output] + list(states) if self.return_state else output

  def compute_mask(self, inputs, mask=None):
    output_mask = mask if self.return_sequences else None
    return [output_mask, None, None] if self.return_state else output_mask

  @property
  def ranks(self):
    return self.cell.ranks

  @property
  def local_weights(self):
    return self.cell.local_weights

  @property
  def global_weights(self):
    return self.cell.global_weights

  def original_param_count(self):
    return self.cell.original_param_count()

  def get_config(self):
    config = super().get_config()
    cell_config = self.cell.get_config()
    for key in ('name', 'dtype', 'trainable', 'activity_regularizer'):
      cell_config.pop(key, None)
    config.update(cell_config)
    config.update({k: getattr(self, k) for k in _RNN_ARGS})
    return config

  @classmethod
  def from_plain(cls, layer, **options):
    """A twin of the plain `tf.keras.layers.LSTM` `layer` with `options`."""
    config = layer.get_config()
    for key, allowed in _UNSUPPORTED_PLAIN_ARGS.items():
      if config.get(key, allowed) != allowed:
        raise ValueError(f'{layer.name}: {key}={config[key]!r} is not supported by '
                         f'{cls.__name__}; allowed: {allowed!r}.')
    kwargs = {k: config[k] for k in _SHARED_PLAIN_ARGS if k in config}
    return cls(**kwargs, **options)

  def to_plain(self):
    """An unbuilt `tf.keras.layers.LSTM` with this layer's arguments."""
    config = self.get_config()
    return tf.keras.layers.LSTM(**{k: config[k] for k in _SHARED_PLAIN_ARGS if k in config})

  def plain_weights(self):
    """`[kernel, recurrent_kernel(, bias)]` for `to_plain()`, as numpy arrays."""
    return self.cell.plain_weights()


@_register
class FedParaLSTM(_FactorizedLSTM):
  """LSTM layer with FedPara input and recurrent kernels (see `FedParaLSTMCell`).

  >>> FedParaLSTM(16, gamma=0.5)(tf.zeros((2, 5, 8))).shape
  TensorShape([2, 16])

  Args, Input shape, Output shape: see `_FactorizedLSTM`.
  """

  cell_class = FedParaLSTMCell


@_register
class PFedParaLSTM(_FactorizedLSTM):
  """LSTM layer with pFedPara kernels (see `PFedParaLSTMCell`).

  Args, Input shape, Output shape: see `_FactorizedLSTM`.
  """

  cell_class = PFedParaLSTMCell


@_register
class LowRankLSTM(_FactorizedLSTM):
  """LSTM layer with conventional low-rank kernels (baseline).

  Args, Input shape, Output shape: see `_FactorizedLSTM`.
  """

  cell_class = LowRankLSTMCell
