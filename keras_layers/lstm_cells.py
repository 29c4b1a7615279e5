"""LSTM cells with composed kernels: FedPara, pFedPara, low-rank, and the weight-normalised plain
cell.

The cells work inside `tf.keras.layers.RNN` like `tf.keras.layers.LSTMCell` (they then compose
their kernels at every time step); the layers of `keras_layers.lstm` compose both kernels once per
call and run a cell's step with them over the sequence. `weight_norm=True` normalises each
composed kernel's columns (`keras_layers.weight_norm`); `WeightNormLSTMCell` is the plain cell
with the same normalisation.
"""

from typing import Any, Optional

from keras_layers import backend
from keras_layers import base
from keras_layers import weight_norm as weight_norm_lib
from keras_layers.backend import keras
from keras_layers.backend import ops

_register = backend.register


def _gate_inputs(inputs, h, kernel, recurrent_kernel, masks):
  """`x K + h U`, with dropout `masks = (input masks, recurrent masks)`: each None, one mask
  for every gate, or four, one per gate (Keras 3's LSTM with recurrent dropout)."""
  input_masks, recurrent_masks = masks
  if len(input_masks or ()) != 4 and len(recurrent_masks or ()) != 4:
    x = inputs * input_masks[0] if input_masks else inputs
    h = h * recurrent_masks[0] if recurrent_masks else h
    return ops.matmul(x, kernel) + ops.matmul(h, recurrent_kernel)
  xs = [inputs * m for m in input_masks] if input_masks else [inputs] * 4
  hs = [h * m for m in recurrent_masks] if recurrent_masks else [h] * 4
  return ops.concatenate(
      [ops.matmul(x, k) + ops.matmul(h_g, u) for x, h_g, k, u in
       zip(xs, hs, ops.split(kernel, 4, axis=-1), ops.split(recurrent_kernel, 4, axis=-1))],
      axis=-1)


def _lstm_step(cell, inputs, states, kernel, recurrent_kernel, masks=(None, None)):
  """One LSTM step of `cell` (its bias and activations) with the given kernels.

  `z = x K + h U + b` split into gates `i, f, g, o` (Keras order):
  `c' = sigma(f) c + sigma(i) tanh(g)`, `h' = sigma(o) tanh(c')`. With dropout `masks`
  (`_ComposedKernelCell.dropout_masks`), `x` and `h` are multiplied by them inside `z` only,
  as Keras does.
  Returns `(h', [h', c'])`.
  """
  h, c = states[0], states[1]
  z = _gate_inputs(inputs, h, kernel, recurrent_kernel, masks)
  if cell.bias is not None:
    z = backend.bias_add(z, cell.bias)
  z_i, z_f, z_g, z_o = ops.split(z, 4, axis=-1)
  c = (cell.recurrent_activation(z_f) * c
       + cell.recurrent_activation(z_i) * cell.activation(z_g))
  h = cell.recurrent_activation(z_o) * cell.activation(c)
  return h, [h, c]


def _forget_bias_initializer(cell):
  """Bias initializer of `cell`: its `bias_initializer`, plus 1 on the forget gate when
  `cell.unit_forget_bias` (as Keras)."""

  def initializer(shape, dtype=None, **kwargs):
    del shape, kwargs
    if not cell.unit_forget_bias:
      return cell.bias_initializer((4 * cell.units,), dtype=dtype)
    return ops.concatenate([cell.bias_initializer((cell.units,), dtype=dtype),
                            ops.ones((cell.units,), dtype=dtype),
                            cell.bias_initializer((2 * cell.units,), dtype=dtype)], axis=0)

  return initializer


def _zero_states(cell, inputs=None, batch_size=None, dtype=None):
  if inputs is not None:
    batch_size, dtype = ops.shape(inputs)[0], inputs.dtype
  return [ops.zeros((batch_size, cell.units), dtype=dtype or cell.compute_dtype)
          for _ in range(2)]


def _input_dim(cell, input_shape):
  in_dim = backend.dims(input_shape)[-1]
  if in_dim is None:
    raise ValueError(f'{cell.name}: the feature dimension of the input must '
                     f'be known; got input shape {backend.dims(input_shape)}.')
  return int(in_dim)


def _check_rate(value, name):
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
    raise ValueError(f'{name} must be a number in [0, 1); got {value!r}.')
  return float(value)


class _ComposedKernelCell:
  """The step of a cell that composes its kernels: `composed_kernel()` and
  `composed_recurrent_kernel()` (or `constants`, already composed) in `_lstm_step`.

  Dropout (`dropout`, `recurrent_dropout`, `seed`) follows the installed Keras' LSTM: one mask
  per sequence, drawn when the sequence starts and used at every step; on Keras 3 with
  recurrent dropout, four masks each (one per gate), on Keras 2 one. The LSTM layers of this
  module draw them (`dropout_masks`); a cell run by `keras.layers.RNN` refuses dropout in
  training, since that loop cannot renew the masks per sequence."""

  dropout = 0.0
  recurrent_dropout = 0.0

  def _init_dropout(self, dropout, recurrent_dropout, seed):
    self.dropout = _check_rate(dropout, 'dropout')
    self.recurrent_dropout = _check_rate(recurrent_dropout, 'recurrent_dropout')
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
      raise ValueError(f'seed must be an integer or None; got {seed!r}.')
    self.seed = seed
    # Only a cell with dropout holds random state (Keras 3 tracks it as the layer's state).
    if self.dropout or self.recurrent_dropout:
      self.seed_generator = backend.seed_generator(seed)

  def dropout_masks(self, step_input, h):
    """`(input masks, recurrent masks)` for one sequence: each None or a list of 1 or 4."""
    count = 4 if backend.IS_KERAS_3 and self.recurrent_dropout else 1

    def draw(like, rate):
      if not rate:
        return None
      return [backend.dropout_mask(like, rate, self.seed_generator) for _ in range(count)]

    return draw(step_input, self.dropout), draw(h, self.recurrent_dropout)

  @backend.no_autograph
  def call(self, inputs, states, training=None, constants=None, masks=(None, None)):
    if training and (self.dropout or self.recurrent_dropout) and masks == (None, None):
      raise ValueError(f'{self.name}: dropout in training runs in the LSTM layers of '
                       f'keras_layers (e.g. FedParaLSTM(dropout=...)), not in a cell run by '
                       f'keras.layers.RNN.')
    if constants:
      kernel, recurrent_kernel = constants
    else:
      kernel, recurrent_kernel = self.composed_kernel(), self.composed_recurrent_kernel()
    return _lstm_step(self, inputs, states, kernel, recurrent_kernel, masks)

  def get_initial_state(self, inputs=None, batch_size=None, dtype=None):
    return _zero_states(self, inputs, batch_size, dtype)


class _FactorizedLSTMCell(_ComposedKernelCell, base.FactorizedLayer):
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
    weight_norm: normalise each composed kernel's columns and scale them by
      the trainable `kernel_g`, `recurrent_g` `(4H,)` (`keras_layers.weight_norm`).
    dropout, recurrent_dropout: fractions in [0, 1) of the inputs / of the recurrent state
      dropped in training, as `keras.layers.LSTM` (see `_ComposedKernelCell`).
    seed: integer seed of the dropout masks, or None.
    **kwargs: the FedPara options of `FactorizedLayer`. `kernel_regularizer`
      applies to both composed kernels.

  Call arguments:
    inputs: `(batch, in)`. states: `[h (batch, H), c (batch, H)]`.
    constants: optional `[kernel, recurrent_kernel]` already composed.
  """

  def __init__(self, units: int, activation: Any = 'tanh', recurrent_activation: Any = 'sigmoid',
               use_bias: bool = True, unit_forget_bias: bool = True, weight_norm: bool = False,
               dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: Optional[int] = None,
               **kwargs: Any):
    super().__init__(activation=activation, use_bias=use_bias, **kwargs)
    self.units = base.check_positive_int(units, 'units')
    self._init_dropout(dropout, recurrent_dropout, seed)
    self.recurrent_activation = keras.activations.get(recurrent_activation)
    self.unit_forget_bias = bool(unit_forget_bias)
    if not isinstance(weight_norm, bool):
      raise ValueError(f'weight_norm must be True or False; got {weight_norm!r}.')
    self.weight_norm = weight_norm
    if weight_norm and self.adapter:
      raise ValueError(f'{self.name}: an adapter adds to a pretrained kernel; weight_norm=True '
                       f'would normalise that sum (convert the WeightNormLSTM plain first).')
    self.state_size = [self.units, self.units]
    self.output_size = self.units
    self.kernel_factorization = None
    self.recurrent_factorization = None
    self.kernel_g = None
    self.recurrent_g = None

  def build(self, input_shape):
    gates = 4 * self.units
    kernel_shape, recurrent_shape = (_input_dim(self, input_shape), gates), (self.units, gates)
    self._check_rank(kernel_shape, recurrent_shape)
    self.kernel_factorization = self._add_factorization(kernel_shape, 'kernel_')
    self.recurrent_factorization = self._add_factorization(recurrent_shape, 'recurrent_')
    self._add_bias(gates, initializer=_forget_bias_initializer(self))
    if self.weight_norm:
      self.kernel_g = weight_norm_lib.add_scale(self, 'kernel_g', kernel_shape)
      self.recurrent_g = weight_norm_lib.add_scale(self, 'recurrent_g', recurrent_shape)
    self.built = True

  def composed_kernel(self):
    """The input kernel `(in, 4 units)` composed from its factors (normalised with weight_norm)."""
    return self._composed(self.kernel_factorization, self.kernel_g)

  def composed_recurrent_kernel(self):
    """The recurrent kernel `(units, 4 units)` composed from its factors (normalised with
    weight_norm)."""
    return self._composed(self.recurrent_factorization, self.recurrent_g)

  def _composed(self, factorization, scale):
    """The kernel of `factorization`, normalised with weight_norm; the composition before the
    normalisation is recorded for the Jacobian correction (`keras_layers.jacobian`)."""
    kernel = self._record(factorization, factorization.compose())
    return weight_norm_lib.normalize(kernel, scale) if self.weight_norm else kernel

  def original_param_count(self):
    """Parameters of the plain (weight-normalised, with weight_norm) LSTM cell this one replaces."""
    scales = 2 * 4 * self.units if self.weight_norm else 0
    return super().original_param_count() + scales

  def plain_weights(self):
    """`[kernel, recurrent_kernel(, bias)]` of the plain LSTM computing the same function."""
    weights = [self.composed_kernel(), self.composed_recurrent_kernel()]
    weights += [self.bias] if self.bias is not None else []
    return [backend.to_numpy(w) for w in weights]

  def get_config(self):
    config = super().get_config()
    config.update(
        units=self.units,
        recurrent_activation=keras.activations.serialize(self.recurrent_activation),
        unit_forget_bias=self.unit_forget_bias,
        weight_norm=self.weight_norm,
        dropout=self.dropout,
        recurrent_dropout=self.recurrent_dropout,
        seed=self.seed)
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


# The factorised cells (`base.factorized_layers` lists one alone outside the LSTM layers).
FACTORIZED_CELLS = (FedParaLSTMCell, PFedParaLSTMCell, LowRankLSTMCell)


@_register
class WeightNormLSTMCell(_ComposedKernelCell, keras.layers.Layer):
  """Plain LSTM cell whose kernels are weight-normalised: `g * V / ||V||` per column.

  Weights: the directions `kernel (in, 4H)` and `recurrent_kernel (H, 4H)`, the
  `bias (4H,)`, and the scales `kernel_g`, `recurrent_g (4H,)` (initial values:
  `weight_norm.initial_scale`). The step is `tf.keras.layers.LSTMCell`'s with the
  normalised kernels.

  Args:
    units: positive integer H.
    activation, recurrent_activation, use_bias, unit_forget_bias: as
      `tf.keras.layers.LSTMCell`.
    kernel_initializer, recurrent_initializer, bias_initializer: of `V`, `U`
      and the bias (Keras' defaults).

  Call arguments:
    inputs: `(batch, in)`. states: `[h (batch, H), c (batch, H)]`.
    constants: optional `[kernel, recurrent_kernel]` already normalised.
  """

  def __init__(self, units: int, activation: Any = 'tanh', recurrent_activation: Any = 'sigmoid',
               use_bias: bool = True, unit_forget_bias: bool = True,
               kernel_initializer: Any = 'glorot_uniform',
               recurrent_initializer: Any = 'orthogonal', bias_initializer: Any = 'zeros',
               **kwargs: Any):
    super().__init__(**kwargs)
    self.units = base.check_positive_int(units, 'units')
    self.activation = keras.activations.get(activation)
    self.recurrent_activation = keras.activations.get(recurrent_activation)
    self.use_bias = bool(use_bias)
    self.unit_forget_bias = bool(unit_forget_bias)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.state_size = [self.units, self.units]
    self.output_size = self.units
    self.bias = None

  def build(self, input_shape):
    gates = 4 * self.units
    kernel_shape, recurrent_shape = (_input_dim(self, input_shape), gates), (self.units, gates)
    self.kernel = self.add_weight(name='kernel', shape=kernel_shape,
                                  initializer=self.kernel_initializer)
    self.recurrent_kernel = self.add_weight(name='recurrent_kernel', shape=recurrent_shape,
                                            initializer=self.recurrent_initializer)
    if self.use_bias:
      self.bias = self.add_weight(name='bias', shape=(gates,),
                                  initializer=_forget_bias_initializer(self))
    self.kernel_g = weight_norm_lib.add_scale(self, 'kernel_g', kernel_shape)
    self.recurrent_g = weight_norm_lib.add_scale(self, 'recurrent_g', recurrent_shape)
    self.built = True

  def composed_kernel(self):
    """The normalised input kernel `(in, 4 units)`."""
    return weight_norm_lib.normalize(self.kernel, self.kernel_g)

  def composed_recurrent_kernel(self):
    """The normalised recurrent kernel `(units, 4 units)`."""
    return weight_norm_lib.normalize(self.recurrent_kernel, self.recurrent_g)

  def get_config(self):
    config = super().get_config()
    config.update(
        units=self.units,
        activation=keras.activations.serialize(self.activation),
        recurrent_activation=keras.activations.serialize(self.recurrent_activation),
        use_bias=self.use_bias,
        unit_forget_bias=self.unit_forget_bias,
        kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        recurrent_initializer=keras.initializers.serialize(self.recurrent_initializer),
        bias_initializer=keras.initializers.serialize(self.bias_initializer))
    return config
