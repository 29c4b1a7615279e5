"""Model-level parameter report: per layer, original vs factorised parameters."""

import collections

from keras_layers import conversion
from keras_layers.backend import keras

LayerReport = collections.namedtuple(
    'LayerReport', ['name', 'kind', 'ranks', 'original', 'factorized'])


def _layer_rows(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _layer_rows(layer)  # nested model
      continue
    count = layer.count_params() if layer.built else 0
    part = conversion.factorized_part(layer)
    if part is not None:
      yield LayerReport(layer.name, type(layer).__name__, tuple(part.ranks),
                        part.original_param_count(), count)
    else:
      yield LayerReport(layer.name, type(layer).__name__, (), count, count)


def parameter_report(model):
  """Rows `LayerReport(name, kind, ranks, original, factorized)`, one per layer.

  `original` is the parameter count of the plain layer a factorised layer
  replaces (kernels and bias); for other layers both counts are equal.
  """
  return list(_layer_rows(model))


def total_params(model):
  """`(original, factorized)` parameter totals of `model`."""
  rows = parameter_report(model)
  return sum(r.original for r in rows), sum(r.factorized for r in rows)


def format_parameter_report(model):
  """The report as a text table with totals and the compression ratio."""
  rows = parameter_report(model)
  width = max([len(r.name) for r in rows] + [5])
  lines = [f'{"layer":<{width}}  {"type":<18} {"rank":>9} {"original":>12} '
           f'{"factorised":>12} {"ratio":>7}']
  for r in rows:
    rank = ','.join(str(k) for k in r.ranks) or '-'
    ratio = f'{r.factorized / r.original:.3f}' if r.original else '-'
    lines.append(f'{r.name:<{width}}  {r.kind:<18} {rank:>9} {r.original:>12,} '
                 f'{r.factorized:>12,} {ratio:>7}')
  original, factorized = total_params(model)
  ratio = f'{factorized / original:.3f}' if original else '-'
  lines.append(f'{"total":<{width}}  {"":<18} {"":>9} {original:>12,} '
               f'{factorized:>12,} {ratio:>7}')
  return '\n'.join(lines)
