"""Build a factorised twin of a Keras model, and export one back to plain layers.

`convert` replaces the `Dense`, `EinsumDense`, `Conv1D`, `Conv2D`, `LSTM`, `WeightNormLSTM` and
`MultiHeadAttention` layers of a Sequential or Functional model, also inside `Bidirectional` and
`TimeDistributed`, by their FedPara, pFedPara or low-rank counterparts (same names, same
arguments; in a `MultiHeadAttention` its projections, `keras_layers.attention`); `export` composes
every factorised kernel once and returns a model of ordinary Keras layers with the same outputs,
which needs nothing from this package to run.
"""

from typing import Any, Optional, Sequence, Union

import warnings

from keras_layers import attention
from keras_layers import backend
from keras_layers import base
from keras_layers import conv
from keras_layers import dense
from keras_layers import einsum_dense
from keras_layers import lstm
from keras_layers import ranks
from keras_layers import warm_start
from keras_layers.backend import keras

PARAMETERIZATIONS = ('fedpara', 'pfedpara', 'lowrank')

# Plain Keras class -> factorised class, per parameterisation. Matched on the
# exact type, so that subclasses such as Conv2DTranspose are left alone.
_REPLACEMENTS = {
    'fedpara': {keras.layers.Dense: dense.FedParaDense,
               keras.layers.EinsumDense: einsum_dense.FedParaEinsumDense,
                keras.layers.Conv2D: conv.FedParaConv2D,
                keras.layers.Conv1D: conv.FedParaConv1D,
                keras.layers.LSTM: lstm.FedParaLSTM,
                lstm.WeightNormLSTM: lstm.FedParaLSTM,
                keras.layers.MultiHeadAttention: attention.FedParaMultiHeadAttention},
    'pfedpara': {keras.layers.Dense: dense.PFedParaDense,
                keras.layers.EinsumDense: einsum_dense.PFedParaEinsumDense,
                 keras.layers.Conv2D: conv.PFedParaConv2D,
                 keras.layers.Conv1D: conv.PFedParaConv1D,
                 keras.layers.LSTM: lstm.PFedParaLSTM,
                 lstm.WeightNormLSTM: lstm.PFedParaLSTM,
                keras.layers.MultiHeadAttention: attention.PFedParaMultiHeadAttention},
    'lowrank': {keras.layers.Dense: dense.LowRankDense,
               keras.layers.EinsumDense: einsum_dense.LowRankEinsumDense,
                keras.layers.Conv2D: conv.LowRankConv2D,
                keras.layers.Conv1D: conv.LowRankConv1D,
                keras.layers.LSTM: lstm.LowRankLSTM,
                lstm.WeightNormLSTM: lstm.LowRankLSTM,
                keras.layers.MultiHeadAttention: attention.LowRankMultiHeadAttention},
}

# Replaceable types that convert leaves plain, with a warning, where another layer builds them
# inside itself (the EinsumDense projections of a MultiHeadAttention convert does not replace, a
# MultiHeadAttention inside a custom layer); any other replaceable type nested that way is
# refused (`_unconverted`).
_PLAIN_WHEN_NESTED = (keras.layers.EinsumDense, keras.layers.MultiHeadAttention)

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


def is_factorized(layer: Any) -> bool:
  """True for a layer with factors (see `factorized_part`): the one definition the package,
  its TFF wiring and the binaries use; `export` turns each such layer back into a plain one."""
  return factorized_part(layer) is not None


def _to_plain(layer):
  """The unbuilt plain layer computing what the factorised `layer` computes."""
  if isinstance(layer, keras.layers.RNN):
    return lstm.rnn_to_plain(layer)
  return layer.to_plain()


def wrapped_layers(layer):
  """The layers a `Bidirectional` (forward, backward) or `TimeDistributed` wrapper holds; []
  for any other layer."""
  if isinstance(layer, keras.layers.Bidirectional):
    return [layer.forward_layer, layer.backward_layer]
  if isinstance(layer, keras.layers.TimeDistributed):
    return [layer.layer]
  return []


def _rewrap(wrapper, inner):
  """A wrapper of `wrapper`'s kind, name and merge mode around the unbuilt layers `inner`."""
  if isinstance(wrapper, keras.layers.Bidirectional):
    forward, backward = inner
    return keras.layers.Bidirectional(forward, backward_layer=backward,
                                      merge_mode=wrapper.merge_mode, name=wrapper.name)
  return keras.layers.TimeDistributed(inner[0], name=wrapper.name)


def _unconverted(model, table, skipped):
  """`(layer, holder)` for the first replaceable layer left nested inside a layer of `model`
  that convert neither replaced nor was told to skip, or None."""
  for holder in model.layers:
    if holder.name in skipped:
      continue
    for layer in backend.sublayers(holder):
      if type(layer) in table and type(layer) not in _PLAIN_WHEN_NESTED:
        return layer, holder
  return None


def _warn_nested_plain(model, converted):
  """A warning naming the layers of `model` that hold `EinsumDense` layers convert leaves
  plain (the projections of a MultiHeadAttention inside another layer: convert replaces layers
  of the model only); `converted`: the names convert replaced or was told to leave."""
  holders = sorted({holder.name for holder in model.layers if holder.name not in converted
                    for layer in backend.sublayers(holder)
                    if layer is not holder and type(layer) in _PLAIN_WHEN_NESTED})
  if holders:
    warnings.warn(f'convert: the EinsumDense / MultiHeadAttention layers inside {holders} stay '
                  f'plain; convert replaces layers of the model itself.', stacklevel=3)


def _kernel_shapes(layer, projections=None):
  """Kernel shapes of a built plain layer as its twin factorises them (one for Dense, Conv and
  EinsumDense: its matrix; two for LSTM; a MultiHeadAttention's: one per projection in
  `projections`, default all)."""
  if isinstance(layer, keras.layers.MultiHeadAttention):
    return [shape for name, part in attention.projection_layers(layer)
            if projections is None or name in projections
            for shape in warm_start.plain_kernel_shapes(part)]
  return warm_start.plain_kernel_shapes(layer)


def layer_pairs(plain, twin):
  """`(plain part, twin part)` for each part of the plain layer `plain` and its converted
  `twin` that holds a kernel: the layer itself, the layers a wrapper holds, or a
  MultiHeadAttention's projections (the twin's factorised or plain)."""
  pairs = []
  for plain_part, twin_part in zip(wrapped_layers(plain) or [plain],
                                   wrapped_layers(twin) or [twin]):
    if isinstance(plain_part, keras.layers.MultiHeadAttention):
      pairs += [(p, t) for (_, p), (_, t) in zip(attention.projection_layers(plain_part),
                                                 attention.projection_layers(twin_part))]
    else:
      pairs.append((plain_part, twin_part))
  return pairs


def check_layer_names(model: Any, names: Any, option: str) -> Optional[set]:
  """The set of `names` (one name or several; None passes through) after checking each is a
  layer of `model`; a ValueError naming the unknown ones and what the model has otherwise."""
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


def _too_small(layer, projections=None):
  """True when some kernel of `layer` cannot hold even a rank-1 FedPara factor."""
  return any(ranks.r_max(shape) < 1 for shape in _kernel_shapes(layer, projections))


def check_model(model, function):
  """`convert` and `export` take a Sequential or Functional model: anything else, one line."""
  if isinstance(model, keras.Model):
    return
  hint = (' (a model holding that layer: keras.Sequential([keras.Input(shape), layer]))'
          if isinstance(model, keras.layers.Layer) else '')
  raise TypeError(f'{function} takes a Sequential or Functional keras.Model; got '
                  f'{type(model).__name__}{hint}.')


def _wanted(layer, include, exclude):
  """Whether `include` / `exclude` (sets of names, include None: all) let convert replace
  `layer`."""
  return (include is None or layer.name in include) and layer.name not in exclude


def _check_rank_is_reachable(model, table, include, exclude, rank, projections):
  """An explicit `rank` above the largest rank of every kernel convert would factorise adds
  nothing to any layer (and a huge one exhausts memory while the factors are made): refused in
  one line before any layer is built. Within that bound a rank that adds nothing to some layer
  only warns (`ranks.warn_if_rank_unreachable`)."""
  if rank is None:
    return
  shapes = []
  for layer in model.layers:
    if _wanted(layer, include, exclude):
      shapes += [shape for part in wrapped_layers(layer) or [layer] if type(part) in table
                 for shape in _kernel_shapes(part, projections)]
  if shapes and rank > max(ranks.max_rank(shape) for shape in shapes):
    largest = max(shapes, key=ranks.max_rank)
    raise ValueError(f'convert: rank {rank} is above {ranks.max_rank(largest)}, the largest rank '
                     f'of any kernel it would factorise (shape {largest}); give a rank in '
                     f'[1, {ranks.max_rank(largest)}].')


def convert(model: Any, parameterization: str = 'fedpara', *, gamma: Optional[float] = None,
            rank: Optional[int] = None, param_ratio: Optional[float] = None,
            include: Optional[Union[str, Sequence[str]]] = None,
            exclude: Optional[Union[str, Sequence[str]]] = None, copy_weights: bool = True,
            init: str = 'random', projections: Optional[Sequence[str]] = None,
            **layer_options: Any) -> Any:
  """Returns a twin of `model` with factorised Dense/EinsumDense/Conv/LSTM/attention layers.

  Args:
    model: a built Sequential or Functional `keras.Model`.
    parameterization: `'fedpara'`, `'pfedpara'` or `'lowrank'`.
    gamma, rank, param_ratio: the rank option, at most one (see
      `FactorizedLayer`); default gamma 0.5.
    include: layer names to replace (default: every replaceable layer).
    exclude: layer names to keep plain (e.g. the classifier).
    copy_weights: copy the weights of the layers kept plain from `model`.
    init: `'random'` (the default): every factorised layer starts from fresh factors
      (`factor_init`), as a model trained from scratch; `'fit'`: each factorised kernel is
      fitted to the trained kernel it replaces and the layer's bias copied, so that the twin
      keeps what `model` learned as far as its rank allows (`keras_layers.warm_start`; the
      relative fit error of each kernel is in `parameter_report`). Not with
      `nonlinearity='tanh'` or weight-normalised LSTMs.
    projections: which projections of each `MultiHeadAttention` to factorise, some of
      `'query'`, `'key'`, `'value'`, `'attention_output'` (and `'gate'`, Keras 3's
      `use_gate=True`); default every one. The others stay plain (`keras_layers.attention`).
    **layer_options: more arguments of the factorised layers
      (`nonlinearity`, `factor_init`, `factor_regularizer`, ...).

  Returns:
    A new, built model with the same inputs, outputs and layer names. Layers
    whose kernel is too small to factorise (`r_max < 1`, e.g. `Dense(1)`) stay
    plain, with a warning. Called while TensorFlow traces a graph (as TFF's computations
    build models), it builds the architecture only: a graph's variables hold no values to copy
    until it runs, so whoever runs it sets them (`fedpara_tff`'s round does, from one eager
    build; docs/DESIGN.md, "Adapters").

  Raises:
    ValueError: unknown parameterisation or a layer name in include/exclude
      that the model does not have; an LSTM with unsupported options; `init='fit'` while a
      graph is traced (the fit reads the trained kernels' values).
  """
  check_model(model, 'convert')
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f'parameterization must be one of {PARAMETERIZATIONS}; '
                     f'got {parameterization!r}.')
  if not model.built:
    raise ValueError(f'model {model.name!r} must be built (give it an input '
                     f'shape) before convert.')
  base.check_rank_options(gamma, rank, param_ratio)
  _check_init(init, layer_options)
  include = check_layer_names(model, include, 'include')
  exclude = check_layer_names(model, exclude, 'exclude') or set()
  table = _REPLACEMENTS[parameterization]
  options = dict(layer_options, gamma=gamma, rank=rank, param_ratio=param_ratio)
  projections = attention.check_projections(projections)
  _check_rank_is_reachable(model, table, include, exclude, rank, projections)
  replaced, skipped = [], set()

  def clone(layer):
    wanted = _wanted(layer, include, exclude)
    inner = wrapped_layers(layer) or [layer]
    targets = [table.get(type(part)) for part in inner]
    if not wanted:
      skipped.add(layer.name)
    if not wanted or None in targets:
      return layer.__class__.from_config(layer.get_config())
    if any(_too_small(part, projections) for part in inner):
      warnings.warn(f'layer {layer.name!r} (kernel '
                    f'{[_kernel_shapes(p, projections) for p in inner]}) is too small to '
                    f'factorise and stays plain.', stacklevel=3)
      skipped.add(layer.name)
      return layer.__class__.from_config(layer.get_config())
    if init == 'fit':
      for part in inner:
        _check_fit_source(part)
    replaced.append(layer.name)
    twins = [target.from_plain(part, **options, **_attention_options(target, projections))
             for target, part in zip(targets, inner)]
    return _rewrap(layer, twins) if inner[0] is not layer else twins[0]

  twin = keras.models.clone_model(model, clone_function=clone)
  left = _unconverted(model, table, skipped | set(replaced))
  if left is not None:
    layer, holder = left
    raise ValueError(
        f'convert: layer {layer.name!r} ({type(layer).__name__}) inside {holder.name!r} '
        f'({type(holder).__name__}) would stay plain; convert replaces layers of the model and '
        f'inside Bidirectional / TimeDistributed: convert {holder.name!r} on its own first, or '
        f'pass exclude=[{holder.name!r}].')
  _warn_nested_plain(model, skipped | set(replaced))
  if not replaced:
    warnings.warn(f'convert: model {model.name!r} has no replaceable '
                  f'Dense/EinsumDense/Conv1D/Conv2D/LSTM/MultiHeadAttention layer (after '
                  f'include/exclude); returning an unchanged copy.', stacklevel=2)
  if backend.building_graph():   # in a graph, whoever runs it sets the values
    return twin
  for layer in model.layers:
    if copy_weights and layer.name not in replaced and layer.weights:
      twin.get_layer(layer.name).set_weights(layer.get_weights())
  for name in replaced:
    for plain_part, twin_part in layer_pairs(model.get_layer(name), twin.get_layer(name)):
      part = factorized_part(twin_part)
      if part is None and copy_weights:   # a projection left plain
        twin_part.set_weights(plain_part.get_weights())
      elif part is not None and init == 'fit':
        warm_start.warm_start(plain_part, part)
  return twin


def _attention_options(target, projections):
  """The argument a MultiHeadAttention twin takes beside the layer options: `projections`."""
  return ({'projections': projections}
          if issubclass(target, keras.layers.MultiHeadAttention) else {})


INITS = ('random', 'fit')


def _check_init(init, layer_options):
  """`init` is one of `INITS`; `'fit'` refuses what it cannot fit, in one line."""
  if init not in INITS:
    raise ValueError(f'convert: init must be one of {INITS}; got {init!r}.')
  if init != 'fit':
    return
  if backend.building_graph():
    raise ValueError("convert: init='fit' reads the trained kernels' values, which a traced "
                     "graph does not hold; convert eagerly (outside tf.function and TFF's "
                     "computations).")
  if layer_options.get('adapter'):
    raise ValueError("convert: init='fit' fits factors to a kernel; an adapter keeps the kernel "
                     "and starts its delta at zero (use init='random').")
  if layer_options.get('nonlinearity') not in (None, 'none'):
    raise ValueError(f"convert: init='fit' fits the product of the factors; with "
                     f"nonlinearity={layer_options['nonlinearity']!r} it is not one (use "
                     f"init='random', or no nonlinearity).")
  if layer_options.get('weight_norm'):
    raise ValueError("convert: init='fit' does not fit weight-normalised kernels "
                     "(weight_norm=True); use init='random'.")


def _check_fit_source(layer):
  if isinstance(layer, lstm.WeightNormLSTM):
    raise ValueError(f"convert: init='fit' does not fit weight-normalised kernels "
                     f"({layer.name!r} is a WeightNormLSTM); use init='random'.")


def export(model: Any) -> Any:
  """Returns a plain-Keras copy of `model` with every kernel composed once.

  Factorised layers become `Dense`, `EinsumDense`, `Conv1D`, `Conv2D` or `LSTM` with the
  composed kernel (pFedPara: `W1 * (W2 + 1)` with this client's local factors);
  other layers keep their weights. The result's outputs match `model`'s.

  Args:
    model: a built Sequential or Functional model.
  """
  check_model(model, 'export')
  if not model.built:
    raise ValueError(f'model {model.name!r} must be built before export.')

  def clone(layer):
    inner = wrapped_layers(layer)
    if inner and any(is_factorized(part) for part in inner):
      return _rewrap(layer, [_to_plain(part) if is_factorized(part)
                             else part.__class__.from_config(part.get_config())
                             for part in inner])
    if is_factorized(layer):
      return _to_plain(layer)
    return layer.__class__.from_config(layer.get_config())

  def plain_weights(layer):
    part = factorized_part(layer)
    return part.plain_weights() if part is not None else layer.get_weights()

  plain = keras.models.clone_model(model, clone_function=clone)
  for layer in model.layers:
    inner = wrapped_layers(layer)
    # A wrapper's weights: those of its layers in order (Bidirectional: forward, then backward).
    weights = (sum((plain_weights(part) for part in inner), []) if inner
               else plain_weights(layer))
    if weights:
      plain.get_layer(layer.name).set_weights(weights)
  return plain
