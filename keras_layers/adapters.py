"""Adapters: a pretrained model's kernels frozen, a FedPara, pFedPara or low-rank delta trained.

`add_adapters(model, 'fedpara', rank=4, alpha=8)` returns a twin of a trained Keras model in
which each targeted `Dense`, `EinsumDense`, `Conv1D`, `Conv2D` or `LSTM` layer (input and
recurrent kernels), and the projections of each targeted `MultiHeadAttention`, computes with

    W = W0 + (alpha / rank) * D,

`W0` the layer's pretrained kernel, frozen (a non-trainable variable `base_kernel`), and `D`
composed by trainable factors: FedPara's `(X1 Y1^T) * (X2 Y2^T)` (PEFT calls this LoHa),
pFedPara's `W1 * (W2 + 1)` with a local `W2`, or low-rank `X Y^T` (LoRA). `D` starts at zero,
so the twin computes exactly what the model did; the first term's `x` factor is the zero one,
so its gradient is not (docs/DESIGN.md, "Adapters"). The pretrained bias is kept and frozen;
every other layer is frozen too unless named in `trainable` (a new classifier head, say).

What trains is then the adapters' factors (and the `trainable` layers): `adapter_weights`
names them, `save_adapters` / `load_adapters` move only them, and `export` merges every adapter
into a plain layer with the kernel `W0 + (alpha / rank) * D`, the same outputs.
"""

import os
import re
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import numpy as np

from keras_layers import backend
from keras_layers import conversion
from keras_layers import warm_start
from keras_layers.backend import keras

# The layer types an adapter can target (exactly these types, as `convert` replaces).
TARGET_TYPES = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D,
                keras.layers.Conv2D, keras.layers.LSTM, keras.layers.MultiHeadAttention)
_TARGET_NAMES = '/'.join(kind.__name__ for kind in TARGET_TYPES)


def _kinds(layer):
  """The types a target can name `layer` by: its own, and those of the layers it wraps."""
  return {type(part) for part in conversion.wrapped_layers(layer) or [layer]}


def _adaptable(layer):
  return any(kind in TARGET_TYPES for kind in _kinds(layer))


def select_targets(model: Any, targets: Optional[Iterable[Any]] = None) -> list:
  """Names of the layers of `model` that `targets` picks, in model order.

  Args:
    model: a built Keras model.
    targets: None (every `Dense`, `EinsumDense`, `Conv1D`, `Conv2D`, `LSTM` and
      `MultiHeadAttention` layer, also inside `Bidirectional` / `TimeDistributed`), or an
      iterable (or one item) of: a layer type (`keras.layers.Dense`: every layer of that type),
      a layer name, or a regular expression matched against whole layer names (`'fc.*'`).

  Raises:
    ValueError: an item picks no adaptable layer (naming it and what the model has), or an
      item is neither a type nor a string.
  """
  candidates = [layer for layer in model.layers if _adaptable(layer)]
  if targets is None:
    return [layer.name for layer in candidates]
  if isinstance(targets, (str, type)):
    targets = [targets]
  chosen = set()
  for item in targets:
    if isinstance(item, type):
      picked = {layer.name for layer in candidates if item in _kinds(layer)}
    elif isinstance(item, str):
      picked = {layer.name for layer in candidates
                if layer.name == item or re.fullmatch(item, layer.name)}
    else:
      raise ValueError(f'targets takes layer types, layer names or name patterns; got '
                       f'{type(item).__name__} {item!r:.60}.')
    if not picked:
      raise ValueError(f'targets item {item!r} picks no {_TARGET_NAMES} layer; the model has '
                       f'{[layer.name for layer in candidates]}.')
    chosen |= picked
  return [layer.name for layer in candidates if layer.name in chosen]


def _check_rank_given(gamma, rank, param_ratio):
  if gamma is None and rank is None and param_ratio is None:
    raise ValueError('add_adapters needs the adapters\' size: give rank (e.g. rank=4), gamma or '
                     'param_ratio.')


def _set_base(plain, twin):
  """Copies the plain layer's kernels into the adapter's frozen bases, and its bias."""
  for base_kernel, kernel in zip(twin.base_kernels, warm_start.plain_kernels(plain)):
    base_kernel.assign(kernel)
  warm_start.copy_bias(plain, twin)


def add_adapters(model: Any, parameterization: str = 'fedpara', *, rank: Optional[int] = None,
                 gamma: Optional[float] = None, param_ratio: Optional[float] = None,
                 alpha: Optional[float] = None, targets: Optional[Iterable[Any]] = None,
                 trainable: Union[str, Sequence[str]] = (),
                 projections: Optional[Sequence[str]] = None, **layer_options: Any) -> Any:
  """A twin of the trained `model` with adapters on its `targets` (module docstring).

  Args:
    model: a built, trained Sequential or Functional `keras.Model`.
    parameterization: the delta: `'fedpara'` (Hadamard product of two low-rank terms),
      `'pfedpara'` (its personalised form; the second term stays on each client) or
      `'lowrank'` (LoRA).
    rank, gamma, param_ratio: the delta's size, one of them (as `convert`); `rank` is the inner
      rank of each term.
    alpha: the scale's numerator, `W = W0 + (alpha / rank) * D`; default the rank (scale 1).
    targets: which layers get adapters (`select_targets`); default every Dense, EinsumDense,
      Conv, LSTM and MultiHeadAttention not named in `trainable`.
    trainable: names of layers that stay trainable as they are (e.g. a new head); every other
      layer without an adapter is frozen.
    projections: which projections of a targeted `MultiHeadAttention` get adapters (as
      `convert`; e.g. `('query', 'value')`, where LoRA is often put); default every one. Its
      other projections are frozen.
    **layer_options: more arguments of the adapter layers (`factor_init` for the non-zero
      factors, `nonlinearity`, `factor_regularizer`, ...).

  Returns:
    A new, built model with the same inputs, outputs and layer names, computing what `model`
    computes until the adapters train. While a graph is traced (TFF's computations), the
    architecture only, as `convert`: the round sets the values (docs/DESIGN.md, "Adapters").
  """
  conversion.check_model(model, 'add_adapters')
  _check_rank_given(gamma, rank, param_ratio)
  names = select_targets(model, targets)
  trainable = [trainable] if isinstance(trainable, str) else list(trainable)
  conversion.check_layer_names(model, trainable, 'trainable')
  if targets is None:   # every adaptable layer but those that train as they are
    names = [name for name in names if name not in trainable]
  both = sorted(set(trainable) & set(names))
  if both:
    raise ValueError(f'layers {both} are both targets and trainable; an adapter\'s layer keeps '
                     f'its pretrained weights frozen: leave them out of one of the two.')
  twin = conversion.convert(model, parameterization, gamma=gamma, rank=rank,
                            param_ratio=param_ratio, include=names, adapter=True,
                            adapter_alpha=alpha, projections=projections, **layer_options)
  adapted = set()   # the targets convert made adapters (not those too small to factorise)
  copy = not backend.building_graph()   # as convert: in a graph, whoever runs it sets them
  for name in names:
    for plain_part, twin_part in conversion.layer_pairs(model.get_layer(name),
                                                        twin.get_layer(name)):
      part = conversion.factorized_part(twin_part)
      if part is not None:
        if copy:
          _set_base(plain_part, part)
        adapted.add(name)
  for layer in twin.layers:
    if layer.name not in adapted and layer.name not in trainable:
      layer.trainable = False
  return twin


def variable_name(variable: Any) -> str:
  """A variable's name with its layer's path (`fc1/x1`), without Keras 2's `:0`."""
  name = getattr(variable, 'path', None) if backend.IS_KERAS_3 else variable.name
  return (name or variable.name).split(':')[0]


def _trainable_by_name(model):
  """`{variable_name: variable}` over `model.trainable_variables`, in that order; two variables
  of one name are refused in one line (a file could not tell them apart)."""
  variables = {}
  for variable in model.trainable_variables:
    name = variable_name(variable)
    if name in variables:
      raise ValueError(f'two trainable variables of model {model.name!r} are named {name!r}; '
                       f'give its layers distinct names.')
    variables[name] = variable
  return variables


def adapter_weights(model: Any) -> Dict[str, np.ndarray]:
  """`{variable name: value}` of what trains in an adapter model (`model.trainable_variables`:
  the adapters' factors and the `trainable` layers), in that order: what `save_adapters`
  writes and what a federated round sends (with pFedPara, less its local factors)."""
  return {name: backend.to_numpy(v) for name, v in _trainable_by_name(model).items()}


def save_adapters(model: Any, path: Union[str, os.PathLike]) -> None:
  """Writes `adapter_weights(model)` to the `.npz` file `path` (the frozen base is not in it:
  it comes from the pretrained model), whole or not at all: into `path + '.partial'` first,
  then renamed over `path`, so that a crash never leaves a half-written file there."""
  weights = adapter_weights(model)
  partial = os.fspath(path) + '.partial'
  try:
    with open(partial, 'wb') as f:
      np.savez(f, **weights)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):   # only when the write or the rename failed
      os.remove(partial)


def load_adapters(model: Any, path: Union[str, os.PathLike]) -> None:
  """Sets the trainable variables of the adapter model `model` from `save_adapters`' file.

  Raises:
    ValueError: the file's names or shapes are not this model's (one line naming the first
      difference); nothing is assigned then.
  """
  with np.load(path) as stored:
    values = {name: stored[name] for name in stored.files}
  variables = _trainable_by_name(model)
  missing, extra = sorted(set(variables) - set(values)), sorted(set(values) - set(variables))
  if missing or extra:
    raise ValueError(f'{path} holds the adapters of another model: '
                     + (f'it lacks {missing[:3]}' if missing else f'it has {extra[:3]} too')
                     + f' (this model trains {len(variables)} variables, the file holds '
                       f'{len(values)}).')
  for name, variable in variables.items():
    if tuple(values[name].shape) != tuple(variable.shape):
      raise ValueError(f'{path}: {name} has shape {tuple(values[name].shape)}; this model\'s '
                       f'is {tuple(variable.shape)}.')
  for name, variable in variables.items():
    variable.assign(values[name])
