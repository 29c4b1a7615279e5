"""What a driver's round takes, checked in Python before TFF or autograph sees it.

A mismatch between the driver and what it is given (an element spec that is not one, a
client dataset of another shape or dtype, the server state of another model, a label outside
the model's classes, a round in which no client has data) would otherwise surface as a TFF
serialisation error, a remote worker's RPC error or a silent 0.0 loss. Each check here raises
one line that names the value and what is allowed (docs/DESIGN.md, "Inputs a round checks").
"""

import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf


def describe_spec(spec: Any) -> str:
  """A short spelling of an element spec: `x=float32[?,98], y=int32[?]`."""
  if isinstance(spec, Mapping):
    return ', '.join(f'{k}={describe_spec(v)}' for k, v in spec.items())
  if isinstance(spec, (tuple, list)):
    return '(' + ', '.join(describe_spec(v) for v in spec) + ')'
  if isinstance(spec, tf.TensorSpec):
    dims = ','.join('?' if d is None else str(d) for d in spec.shape.as_list())
    return f'{spec.dtype.name}[{dims}]'
  return type(spec).__name__


def check_round_clients(client_ids, datasets):
  """`client_ids` as a list, if there are some, distinct, one per dataset; else a ValueError."""
  client_ids = list(client_ids)
  if not client_ids:
    raise ValueError('a round needs at least one client; got no client_ids.')
  if len(set(client_ids)) != len(client_ids) or len(client_ids) != len(datasets):
    raise ValueError(f'client_ids must be distinct and match the datasets; got '
                     f'{client_ids!r} for {len(datasets)} datasets.')
  return client_ids


def check_element_spec(element_spec: Any, *, integer_labels: bool) -> Any:
  """`element_spec` if it is a batched client-dataset spec the round can train on.

  Args:
    element_spec: a mapping with `x` (a `tf.TensorSpec` or a structure of them) and `y`
      (a `tf.TensorSpec`), e.g. the `element_spec` of a dataset of `OrderedDict(x=..., y=...)`
      batches.
    integer_labels: the loss takes class indices (the default sparse categorical
      cross-entropy), so `y` must be of an integer dtype: a float label such as 3.7 would
      be truncated to class 3 without a word.

  Raises:
    TypeError: not a mapping of `x` and `y` tensor specs.
    ValueError: float labels where class indices are needed.
  """
  if not isinstance(element_spec, Mapping) or set(element_spec) != {'x', 'y'}:
    got = (f"a mapping with keys {sorted(element_spec)}" if isinstance(element_spec, Mapping)
           else f'{type(element_spec).__name__} {element_spec!r}'[:200])
    raise TypeError(f"element_spec must be the client datasets' batched element spec, a mapping "
                    f"with keys 'x' and 'y' (e.g. dataset.element_spec of a dataset of "
                    f"OrderedDict(x=..., y=...) batches); got {got}.")
  leaves = tf.nest.flatten(element_spec)
  if not all(isinstance(leaf, tf.TensorSpec) for leaf in leaves):
    raise TypeError(f"element_spec's x and y must be tf.TensorSpec; got "
                    f"{describe_spec(element_spec)}.")
  labels = element_spec['y']
  if integer_labels and not labels.dtype.is_integer:
    raise ValueError(f"element_spec['y'] is {labels.dtype.name}: the default loss (sparse "
                     f"categorical cross-entropy) takes integer class indices and would "
                     f"truncate a label such as 3.7 to 3; give tf.int32 / tf.int64 labels, or "
                     f"a loss_fn for other labels.")
  return element_spec


def check_model_input(keras_model_fn: Any, element_spec: Any) -> None:
  """Refuses, in one line, an `element_spec` whose `x` the model's input cannot take (a Keras
  shape error deep in a traced TFF computation otherwise). The model is built in a throwaway
  graph; a model without a declared input (subclassed, unbuilt) is not checked here."""
  x = element_spec['x']
  with tf.Graph().as_default():
    model = keras_model_fn()
    inputs = getattr(model, 'inputs', None)
    if not inputs or len(inputs) != 1 or not isinstance(x, tf.TensorSpec):
      return
    expected = inputs[0].shape
  if not tf.TensorShape(x.shape).is_compatible_with(expected):
    raise ValueError(f"element_spec['x'] has shape {tuple(x.shape)}, which the model's input "
                     f"{tuple(expected)} does not take; give the element spec of the datasets "
                     f"the model trains on (their x reshaped to {tuple(expected)}).")


def _compatible(expected, actual):
  try:
    tf.nest.assert_same_structure(expected, actual, check_types=False)
  except (TypeError, ValueError):
    return False
  return all(isinstance(a, tf.TensorSpec) and e.is_compatible_with(a)
             for e, a in zip(tf.nest.flatten(expected), tf.nest.flatten(actual)))


def check_datasets(client_ids: Sequence[Any], datasets: Sequence[Any], element_spec: Any) -> None:
  """Refuses a client `tf.data.Dataset` whose elements do not fit `element_spec`, naming the
  client and both specs (other iterables of batches go to TFF as they are)."""
  for client_id, dataset in zip(client_ids, datasets):
    if isinstance(dataset, tf.data.Dataset) and not _compatible(element_spec,
                                                                  dataset.element_spec):
      raise ValueError(f'client {client_id!r}: its dataset has elements '
                       f'{describe_spec(dataset.element_spec)}; this driver was built for '
                       f'element_spec {describe_spec(element_spec)}.')


def check_state(state: Any, global_specs: Sequence[tf.TensorSpec]) -> None:
  """Refuses a server state that is not this model's: not a state, or global weights of
  another count or shape than `global_specs` (the model's global variables)."""
  weights = state.get('global_weights') if isinstance(state, Mapping) else None
  if weights is None:
    raise TypeError(f"state must be the server state this driver's initialize() or next() "
                    f"returned (a mapping with global_weights); got {type(state).__name__}.")
  weights = list(weights)
  if len(weights) != len(global_specs):
    raise ValueError(f"state holds {len(weights)} global weights; this driver's model has "
                     f"{len(global_specs)}: it is another model's state (pass the state this "
                     f"driver's initialize() or next() returned).")
  for i, (value, spec) in enumerate(zip(weights, global_specs)):
    if tuple(np.shape(value)) != tuple(spec.shape):
      raise ValueError(f"state's global weight {i} has shape {tuple(np.shape(value))}; this "
                       f"driver's model has {tuple(spec.shape)} there: it is another model's "
                       f"state (pass the state this driver's initialize() or next() returned).")


def check_trained(client_ids: Sequence[Any], metrics: Mapping[str, Any]) -> None:
  """Refuses a round in which every client's dataset was empty (nothing was trained; the
  caller keeps its state), from the round's `train` metrics."""
  train = metrics['train']
  if float(train['num_examples']) == 0 and int(train['diverged_clients']) == 0:
    shown = ', '.join(repr(c) for c in list(client_ids)[:5])
    more = f' and {len(client_ids) - 5} more' if len(client_ids) > 5 else ''
    raise ValueError(f'every client dataset of this round is empty (clients {shown}{more}): '
                     f'nothing was trained; give each client at least one batch.')


# TensorFlow's sparse cross-entropy on CPU, as raised in-process or relayed by a TFF worker.
_LABEL_ERROR = re.compile(r'Received a label value of (-?\d+) which is outside the valid '
                          r'range of \[0, (\d+)\)')


def label_error(error: BaseException, client_ids: Sequence[Any],
                datasets: Sequence[Any]) -> Optional[ValueError]:
  """A one-line `ValueError` for `error` when it is TensorFlow's "label outside the classes"
  (naming the client whose dataset holds it, found by reading the labels again), else None."""
  match = _LABEL_ERROR.search(str(error))
  if match is None:
    return None
  classes = int(match.group(2))
  client, label = _first_bad_label(client_ids, datasets, classes)
  where = ('a client dataset holds' if client is None
           else f'client {client!r}: its dataset holds')
  return ValueError(f'{where} label {label if label is not None else match.group(1)}, outside '
                    f'the model\'s {classes} classes: labels must be class indices in '
                    f'[0, {classes}).')


def _first_bad_label(client_ids, datasets, classes):
  for client_id, dataset in zip(client_ids, datasets):
    if not isinstance(dataset, tf.data.Dataset):
      continue
    for batch in dataset:
      labels = np.asarray(batch['y'])
      bad = labels[(labels < 0) | (labels >= classes)]
      if bad.size:
        return client_id, int(bad.flat[0])
  return None, None
