"""LSTM layers with factorised input and recurrent kernels: FedPara, pFedPara, low-rank.

The `*LSTM` layers compose both kernels once per call and run their cell's step
(`keras_layers.lstm_cells`) with them over the sequence, so a sequence costs one composition.
`weight_norm=True` normalises each composed kernel's columns (`keras_layers.weight_norm`);
`WeightNormLSTM` is the plain LSTM with the same normalisation, the original model of the
paper's LSTM runs.
"""

from typing import Any

from keras_layers import backend
from keras_layers import base
from keras_layers.backend import keras
from keras_layers.lstm_cells import FACTORIZED_CELLS  # pylint: disable=unused-import  # API
from keras_layers.lstm_cells import FedParaLSTMCell
from keras_layers.lstm_cells import LowRankLSTMCell
from keras_layers.lstm_cells import PFedParaLSTMCell
from keras_layers.lstm_cells import WeightNormLSTMCell

_register = backend.register


_LAYER_KWARGS = ('name', 'dtype', 'trainable', 'input_shape', 'batch_input_shape',
                 'batch_size', 'activity_regularizer')
_RNN_ARGS = ('return_sequences', 'return_state', 'go_backwards', 'unroll')
_CELL_PLAIN_ARGS = ('units', 'activation', 'recurrent_activation', 'use_bias',
                    'unit_forget_bias', 'bias_initializer', 'kernel_regularizer',
                    'bias_regularizer', 'bias_constraint', 'dropout', 'recurrent_dropout')
# Keras 3's LSTM takes the dropout seed; Keras 2's has none.
_CELL_PLAIN_ARGS += ('seed',) if backend.IS_KERAS_3 else ()
# Arguments a factorised LSTM shares, with the same meaning, with tf.keras.layers.LSTM.
_SHARED_PLAIN_ARGS = _CELL_PLAIN_ARGS + _RNN_ARGS + _LAYER_KWARGS


def rnn_to_plain(layer):
  """An unbuilt `tf.keras.layers.LSTM` computing what `tf.keras.layers.RNN(cell)` does, for a
  factorised LSTM `cell` (its weights: `cell.plain_weights()`)."""
  rnn_config, cell_config = layer.get_config(), layer.cell.get_config()
  kwargs = {k: rnn_config[k] for k in _RNN_ARGS + _LAYER_KWARGS + ('stateful', 'time_major')
            if k in rnn_config}
  kwargs.update({k: cell_config[k] for k in _CELL_PLAIN_ARGS if k in cell_config})
  return keras.layers.LSTM(**kwargs)


# Arguments of tf.keras.layers.LSTM that have no factorised counterpart, with
# the only value we accept.
_UNSUPPORTED_PLAIN_ARGS = {'time_major': False,
                           'stateful': False,
                           'recurrent_regularizer': None, 'kernel_constraint': None,
                           'recurrent_constraint': None}


class _KernelLSTM(keras.layers.Layer):
  """`tf.keras.layers.LSTM`-compatible layer over a cell that composes its kernels.

  Composes the input and recurrent kernels once per call, then runs the
  recurrence with `tf.keras.backend.rnn` (the loop Keras' own LSTM uses).

  Args:
    units: positive integer H.
    return_sequences, return_state, go_backwards, unroll: as
      `tf.keras.layers.LSTM`.
    **kwargs: the cell's arguments (`activation`, `recurrent_activation`,
      `use_bias`, `unit_forget_bias`, `weight_norm`, FedPara options,
      regularizers) and the base Layer arguments (`name`, `dtype`, ...).
      `dropout`, `recurrent_dropout` and `seed` as `keras.layers.LSTM`; `stateful` is not
      supported.

  Input shape:
    `(batch, timesteps, features)`.

  Output shape:
    `(batch, units)`, or `(batch, timesteps, units)` with `return_sequences`;
    with `return_state`, followed by the final `h` and `c`.
  """

  cell_class = None

  def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
               go_backwards: bool = False, unroll: bool = False, **kwargs: Any):
    layer_kwargs = {k: kwargs.pop(k) for k in _LAYER_KWARGS if k in kwargs}
    super().__init__(**layer_kwargs)
    self.units = base.check_positive_int(units, 'units')
    self.return_sequences = bool(return_sequences)
    self.return_state = bool(return_state)
    self.go_backwards = bool(go_backwards)
    self.unroll = bool(unroll)
    # Read by Keras' `Bidirectional` (both generations); a stateful layer is not supported.
    self.stateful = False
    self.cell = self.cell_class(units, name='cell', dtype=layer_kwargs.get('dtype'),
                                **kwargs)
    self.input_spec = keras.layers.InputSpec(ndim=3)
    self.supports_masking = True

  def build(self, input_shape):
    input_shape = backend.dims(input_shape)
    with backend.name_scope(self.cell.name):
      self.cell.build((input_shape[0], input_shape[-1]))
    self.built = True

  def composed_kernel(self):
    """The input kernel `(features, 4 units)`."""
    return self.cell.composed_kernel()

  def composed_recurrent_kernel(self):
    """The recurrent kernel `(units, 4 units)`."""
    return self.cell.composed_recurrent_kernel()

  @backend.no_autograph
  def call(self, inputs, mask=None, training=None, initial_state=None):
    constants = [self.cell.composed_kernel(), self.cell.composed_recurrent_kernel()]
    if initial_state is None:
      initial_state = self.cell.get_initial_state(inputs=inputs[:, 0])
    # Dropout masks: drawn once per call (per sequence), used at every step in training. Keras
    # 3's LSTM draws them on every call, training or not: so do we there, so that one seed
    # gives both layers the same masks.
    drawn = ((None, None) if not (training or backend.IS_KERAS_3)
             else self.cell.dropout_masks(inputs[:, 0], initial_state[0]))
    masks = drawn if training else (None, None)

    def step(x_t, states):
      return self.cell.call(x_t, states, training=training, constants=constants, masks=masks)

    last, outputs, states = backend.rnn(
        step, inputs, list(initial_state), go_backwards=self.go_backwards, mask=mask,
        unroll=self.unroll, return_sequences=self.return_sequences)
    output = outputs if self.return_sequences else last
    return [output] + list(states) if self.return_state else output

  def compute_output_shape(self, input_shape):
    batch, steps = backend.dims(input_shape)[:2]
    output = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
    return [output, (batch, self.units), (batch, self.units)] if self.return_state else output

  def compute_mask(self, inputs, mask=None):
    output_mask = mask if self.return_sequences else None
    return [output_mask, None, None] if self.return_state else output_mask

  def get_config(self):
    config = super().get_config()
    cell_config = self.cell.get_config()
    for key in ('name', 'dtype', 'trainable', 'activity_regularizer'):
      cell_config.pop(key, None)
    config.update(cell_config)
    config.update({k: getattr(self, k) for k in _RNN_ARGS})
    return config


class _FactorizedLSTM(_KernelLSTM):
  """`tf.keras.layers.LSTM`-compatible layer over a factorised cell (see `_KernelLSTM`).

  Args, Input shape, Output shape: see `_KernelLSTM`.
  """

  plain_class = keras.layers.LSTM
  # `keras_layers.base.factorized_layers`: this layer stands for its cell.
  answers_for_cell = True

  @property
  def ranks(self):
    return self.cell.ranks

  @property
  def factorizations(self):
    return self.cell.factorizations

  def labelled_factorizations(self):
    return self.cell.labelled_factorizations(self.name)

  @property
  def local_weights(self):
    return self.cell.local_weights

  @property
  def global_weights(self):
    return self.cell.global_weights

  def original_param_count(self):
    return self.cell.original_param_count()

  @property
  def base_kernels(self):
    return self.cell.base_kernels

  def adapter_param_count(self):
    return self.cell.adapter_param_count()

  def frozen_param_count(self):
    return self.cell.frozen_param_count()

  @classmethod
  def from_plain(cls, layer, **options):
    """A twin of the plain `tf.keras.layers.LSTM` or `WeightNormLSTM` `layer` with `options`
    (`weight_norm=True` for the latter)."""
    config = layer.get_config()
    if isinstance(layer, WeightNormLSTM):
      options = dict(options, weight_norm=True)
    for key, allowed in _UNSUPPORTED_PLAIN_ARGS.items():
      if config.get(key, allowed) != allowed:
        raise ValueError(f'{layer.name}: {key}={config[key]!r} is not supported by '
                         f'{cls.__name__}; allowed: {allowed!r}.')
    kwargs = {k: config[k] for k in _SHARED_PLAIN_ARGS if k in config}
    return cls(**kwargs, **options)

  def to_plain(self):
    """An unbuilt `tf.keras.layers.LSTM` with this layer's arguments."""
    config = self.get_config()
    return keras.layers.LSTM(**{k: config[k] for k in _SHARED_PLAIN_ARGS if k in config})

  def plain_weights(self):
    """`[kernel, recurrent_kernel(, bias)]` for `to_plain()`, as numpy arrays."""
    return self.cell.plain_weights()


@_register
class WeightNormLSTM(_KernelLSTM):
  """Plain LSTM layer with weight-normalised kernels (see `WeightNormLSTMCell`).

  The original model of the paper's LSTM runs; `convert` turns it into a
  factorised LSTM with `weight_norm=True`.

  >>> WeightNormLSTM(16)(tf.zeros((2, 5, 8))).shape
  TensorShape([2, 16])

  Args, Input shape, Output shape: see `_KernelLSTM` (cell arguments: `WeightNormLSTMCell`).
  """

  cell_class = WeightNormLSTMCell


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
