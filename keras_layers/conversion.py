"""Build a factorised twin of a Keras model, and export one back to plain layers.

`convert` replaces the `Dense`, `Conv1D`, `Conv2D`, `LSTM` and `WeightNormLSTM` layers of a
Sequential or Functional model by their FedPara, pFedPara or low-rank
counterparts (same names, same arguments); `export` composes every factorised
kernel once and returns a model of ordinary Keras layers with the same outputs,
which needs nothing from this package to run.
"""

import warnings


from keras_layers import base
from keras_layers import conv
from keras_layers import dense
from keras_layers import lstm
from keras_layers import ranks
from keras_layers.backend import keras

PARAMETERIZATIONS = ('fedpara', 'pfedpara', 'lowrank')

# Plain Keras class -> factorised class, per parameterisation. Matched on the
# exact type, so that subclasses such as Conv2DTranspose are left alone.
_REPLACEMENTS = {
    'fedpara': {keras.layers.Dense: dense.FedParaDense,
                keras.layers.Conv2D: conv.FedParaConv2D,
                keras.layers.Conv1D: conv.FedParaConv1D,
                keras.layers.LSTM: lstm.FedParaLSTM,
                lstm.WeightNormLSTM: lstm.FedParaLSTM},
    'pfedpara': {keras.layers.Dense: dense.PFedParaDense,
                 keras.layers.Conv2D: conv.PFedParaConv2D,
                 keras.layers.Conv1D: conv.PFedParaConv1D,
                 keras.layers.LSTM: lstm.PFedParaLSTM,
                 lstm.WeightNormLSTM: lstm.PFedParaLSTM},
    'lowrank': {keras.layers.Dense: dense.LowRankDense,
                keras.layers.Conv2D: conv.LowRankConv2D,
                keras.layers.Conv1D: conv.LowRankConv1D,
                keras.layers.LSTM: lstm.LowRankLSTM,
                lstm.WeightNormLSTM: lstm.LowRankLSTM},
}

_FACTORIZED_TYPES = tuple({cls for table in _REPLACEMENTS.values()
                           for cls in table.values()})


def factorized_part(layer):
  """What holds `layer`'s factors, or None when it has none.

  The layer itself for the FedPara / pFedPara / low-rank Dense, Conv and LSTM
  layers (and any `base.FactorizedLayer`); the cell for a
  `keras.layers.RNN` over a factorised cell (`RNN(FedParaLSTMCell(...))`).
  Either has `ranks`, `original_param_count()` and `plain_weights()`.
  """
  if isinstance(layer, _FACTORIZED_TYPES) or base.holds_factors(layer):
    return layer
  cell = getattr(layer, 'cell', None)
  if isinstance(layer, keras.layers.RNN) and base.holds_factors(cell):
    return cell
  return None


def is_factorized(layer):
  """True for a layer with factors (see `factorized_part`): the one definition the package,
  its TFF wiring and the binaries use; `export` turns each such layer back into a plain one."""
  return factorized_part(layer) is not None


def _to_plain(layer):
  """The unbuilt plain layer computing what the factorised `layer` computes."""
  if isinstance(layer, keras.layers.RNN):
    return lstm.rnn_to_plain(layer)
  return layer.to_plain()


def _kernel_shapes(layer):
  """Kernel shapes of a built plain layer (one for Dense/Conv, two for LSTM)."""
  if isinstance(layer, (keras.layers.LSTM, lstm.WeightNormLSTM)):
    return [tuple(layer.cell.kernel.shape), tuple(layer.cell.recurrent_kernel.shape)]
  return [tuple(layer.kernel.shape)]


def _check_names(model, names, option):
  if names is None:
    return None
  if isinstance(names, str):
    names = [names]
  names = list(names)
  known = {layer.name for layer in model.layers}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'{option} names layers not in the model: {unknown}; the '
                     f'model has {sorted(known)}.')
  return set(names)


def _too_small(layer):
  """True when some kernel of `layer` cannot hold even a rank-1 FedPara factor."""
  return any(ranks.r_max(shape) < 1 for shape in _kernel_shapes(layer))


def convert(model, parameterization='fedpara', gamma=None, rank=None,
            param_ratio=None, include=None, exclude=None, copy_weights=True,
            **layer_options):
  """Returns a twin of `model` with factorised Dense/Conv/LSTM layers.

  Args:
    model: a built Sequential or Functional `keras.Model`.
    parameterization: `'fedpara'`, `'pfedpara'` or `'lowrank'`.
    gamma, rank, param_ratio: the rank option, at most one (see
      `FactorizedLayer`); default gamma 0.5.
    include: layer names to replace (default: every replaceable layer).
    exclude: layer names to keep plain (e.g. the classifier).
    copy_weights: copy the weights of the layers kept plain from `model`.
    **layer_options: more arguments of the factorised layers
      (`nonlinearity`, `factor_init`, `factor_regularizer`, ...).

  Returns:
    A new, built model with the same inputs, outputs and layer names. Layers
    whose kernel is too small to factorise (`r_max < 1`, e.g. `Dense(1)`) stay
    plain, with a warning.

  Raises:
    ValueError: unknown parameterisation or a layer name in include/exclude
      that the model does not have; an LSTM with unsupported options.
  """
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f'parameterization must be one of {PARAMETERIZATIONS}; '
                     f'got {parameterization!r}.')
  if not model.built:
    raise ValueError(f'model {model.name!r} must be built (give it an input '
                     f'shape) before convert.')
  base.check_rank_options(gamma, rank, param_ratio)
  include = _check_names(model, include, 'include')
  exclude = _check_names(model, exclude, 'exclude') or set()
  table = _REPLACEMENTS[parameterization]
  options = dict(layer_options, gamma=gamma, rank=rank, param_ratio=param_ratio)
  replaced = []

  def clone(layer):
    target = table.get(type(layer))
    wanted = (include is None or layer.name in include) and layer.name not in exclude
    if target is None or not wanted:
      return layer.__class__.from_config(layer.get_config())
    if _too_small(layer):
      warnings.warn(f'layer {layer.name!r} (kernel {_kernel_shapes(layer)}) is too '
                    f'small to factorise and stays plain.', stacklevel=3)
      return layer.__class__.from_config(layer.get_config())
    replaced.append(layer.name)
    return target.from_plain(layer, **options)

  twin = keras.models.clone_model(model, clone_function=clone)
  if not replaced:
    warnings.warn(f'convert: model {model.name!r} has no replaceable '
                  f'Dense/Conv1D/Conv2D/LSTM layer (after include/exclude); '
                  f'returning an unchanged copy.', stacklevel=2)
  if copy_weights:
    for layer in model.layers:
      if layer.name not in replaced and layer.weights:
        twin.get_layer(layer.name).set_weights(layer.get_weights())
  return twin


def export(model):
  """Returns a plain-Keras copy of `model` with every kernel composed once.

  Factorised layers become `Dense`, `Conv1D`, `Conv2D` or `LSTM` with the
  composed kernel (pFedPara: `W1 * (W2 + 1)` with this client's local factors);
  other layers keep their weights. The result's outputs match `model`'s.

  Args:
    model: a built Sequential or Functional model.
  """
  if not model.built:
    raise ValueError(f'model {model.name!r} must be built before export.')

  def clone(layer):
    if is_factorized(layer):
      return _to_plain(layer)
    return layer.__class__.from_config(layer.get_config())

  plain = keras.models.clone_model(model, clone_function=clone)
  for layer in model.layers:
    part = factorized_part(layer)
    weights = part.plain_weights() if part is not None else layer.get_weights()
    if weights:
      plain.get_layer(layer.name).set_weights(weights)
  return plain
