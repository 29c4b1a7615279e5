"""Which variables of a model travel (global) and which stay on the client (local).

pFedPara's local factors (`*2_local`) are local by construction; the caller
can mark whole layers local as well (FedPer-style personalisation). Everything
else is global (docs/DESIGN.md, "pFedPara").
"""

from typing import Any, List, Sequence, Tuple, Union

from keras_layers import backend
from keras_layers import base


def _factorized_local_refs(model):
  return {id(v) for layer in base.factorized_layers(model) for v in layer.local_weights}


def _check_layer_names(model, names):
  known = {layer.name for layer in backend.sublayers(model)}
  unknown = sorted(set(names) - known)
  if unknown:
    raise ValueError(f'local_layers names layers not in the model: {unknown}.')


def local_variable_mask(model: Any, local_layers: Union[str, Sequence[str]] = ()) -> List[bool]:
  """One bool per `model.trainable_variables` entry: True where it is local.

  Args:
    model: a built Keras model.
    local_layers: names of layers whose every variable is local (FedPer).
  """
  local_layers = [local_layers] if isinstance(local_layers, str) else list(local_layers)
  _check_layer_names(model, local_layers)
  refs = _factorized_local_refs(model)
  for layer in backend.sublayers(model):
    if layer.name in local_layers:
      refs.update(id(v) for v in layer.trainable_weights)
  return [id(v) in refs for v in model.trainable_variables]


def split_global_local(model: Any, local_layers: Union[str, Sequence[str]] = ()
                       ) -> Tuple[list, list]:
  """`(global_variables, local_variables)`, each in `trainable_variables` order."""
  mask = local_variable_mask(model, local_layers)
  variables = model.trainable_variables
  return ([v for v, m in zip(variables, mask) if not m],
          [v for v, m in zip(variables, mask) if m])
