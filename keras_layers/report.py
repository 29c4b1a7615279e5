"""Model-level parameter report: per layer, original vs factorised parameters."""

from typing import Any, List, Tuple

import collections

from keras_layers import conversion
from keras_layers.backend import keras

LayerReport = collections.namedtuple(
    'LayerReport', ['name', 'kind', 'ranks', 'original', 'factorized', 'fit_errors'],
    defaults=[()])


def _layer_rows(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _layer_rows(layer)  # nested model
      continue
    count = layer.count_params() if layer.built else 0
    inner = conversion.wrapped_layers(layer)
    parts = [conversion.factorized_part(p) for p in inner or [layer]]
    if not any(parts):
      yield LayerReport(layer.name, type(layer).__name__, (), count, count)
      continue
    # A wrapper (Bidirectional, TimeDistributed): the ranks and plain counts of its layers.
    kind = type(layer).__name__
    if inner:
      kind += f'({type(inner[0]).__name__})'
    ranks = tuple(r for part in parts if part is not None for r in part.ranks)
    original = count + sum(part.original_param_count() - part_layer.count_params()
                           for part, part_layer in zip(parts, inner or [layer])
                           if part is not None)
    frozen = sum(part.frozen_param_count() for part in parts if part is not None)
    if frozen:   # an adapter: what it trains, beside the plain layer it adapts
      kind += ' adapter'
      original, count = count - sum(part.adapter_param_count() for part in parts
                                    if part is not None), count - frozen
    fit_errors = tuple(e for part in parts if part is not None
                       for e in getattr(part, 'fit_errors', ()))
    yield LayerReport(layer.name, kind, ranks, original, count, fit_errors)


def parameter_report(model: Any) -> List[LayerReport]:
  """Rows `LayerReport(name, kind, ranks, original, factorized, fit_errors)`, one per layer.

  `original` is the parameter count of the plain layer a factorised layer
  replaces (kernels and bias); for other layers both counts are equal. For an adapter
  (`keras_layers.adapters`, kind `... adapter`), `original` is the plain layer it adapts (its
  frozen kernels and bias) and `factorized` the adapter's own factors, what trains. `fit_errors`: for a layer
  `convert(..., init='fit')` made, the relative error `||W - T|| / ||T||` of each kernel fitted
  to the trained kernel `T` it replaced (`keras_layers.warm_start`); else empty.

  Raises:
    TypeError: `model` is not a Keras model (it has no `layers`).
  """
  if not isinstance(getattr(model, 'layers', None), (list, tuple)):
    raise TypeError(f'parameter_report takes a Keras model (one with .layers); got '
                    f'{type(model).__name__} {model!r:.60}.')
  return list(_layer_rows(model))


def total_params(model: Any) -> Tuple[int, int]:
  """`(original, factorized)` parameter totals of `model`."""
  rows = parameter_report(model)
  return sum(r.original for r in rows), sum(r.factorized for r in rows)


def format_parameter_report(model: Any) -> str:
  """The report as a text table with totals and the compression ratio."""
  rows = parameter_report(model)
  width = max([len(r.name) for r in rows] + [5])
  kind = max([len(r.kind) for r in rows] + [18])
  fitted = any(r.fit_errors for r in rows)   # a column only for a warm-started model
  lines = [f'{"layer":<{width}}  {"type":<{kind}} {"rank":>9} {"original":>12} '
           f'{"factorised":>12} {"ratio":>7}' + (f' {"fit error":>13}' if fitted else '')]
  for r in rows:
    rank = ','.join(str(k) for k in r.ranks) or '-'
    ratio = f'{r.factorized / r.original:.3f}' if r.original else '-'
    error = ','.join(f'{e:.3f}' for e in r.fit_errors) or '-'
    lines.append(f'{r.name:<{width}}  {r.kind:<{kind}} {rank:>9} {r.original:>12,} '
                 f'{r.factorized:>12,} {ratio:>7}' + (f' {error:>13}' if fitted else ''))
  original, factorized = total_params(model)
  ratio = f'{factorized / original:.3f}' if original else '-'
  lines.append(f'{"total":<{width}}  {"":<{kind}} {"":>9} {original:>12,} '
               f'{factorized:>12,} {ratio:>7}')
  return '\n'.join(lines)
