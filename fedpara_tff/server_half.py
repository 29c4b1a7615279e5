"""The server half of the shared round as TensorFlow functions: one implementation, two runners.

Everything the round does besides the clients' training, written once in TensorFlow:

* the initial values: the server's global variables, a new client's local state, the
  algorithm's server arrays (`initial_global`, `initial_local`, `initial_control`);
* the server step: the algorithm's step from the mean upload, skipped when the mean is not
  finite (`server_step`);
* what clients receive (`received`) and the round's `train` metrics (`train_metrics`).

TFF's round (`fedpara_tff.stateful_round`) wraps each in a `tff.tensorflow.computation`; the
TF backend (`fedpara_tff.in_process_round`) calls them in this Python process, so that it
needs no TFF worker at all (docs/DESIGN.md, "Who can reach a TFF worker"). Same functions,
same numbers.

`parts` is the round's `fedpara_tff.round_layout.ModelParts` throughout.
"""

import collections
from typing import Any, List, Tuple

import numpy as np
import tensorflow as tf

from fedpara_tff import communication


def _initial_model(parts) -> Tuple[list, list]:
  """`(global, model-local)` initial values: a new model's built by `parts.keras_model_fn`, or
  for a pretrained model (one with frozen variables) those of its eager build, which a traced
  graph does not hold (`fedpara_tff.round_layout.Pretrained`)."""
  pretrained = parts.layout.pretrained
  if pretrained is not None:
    return ([tf.constant(v) for v in pretrained.global_values],
            [tf.constant(v) for v in pretrained.local_values])
  return parts.split(parts.keras_model_fn())


def initial_values(parts) -> Tuple[list, list]:
  """`(initial_global, initial_local)` from one model."""
  globals_, locals_ = _initial_model(parts)
  state = [tf.zeros_like(v) for v in globals_] if parts.algorithm.client_state else []
  return list(globals_), list(locals_) + state


def initial_global(parts) -> List[tf.Tensor]:
  """The server's global variables at the start (`_initial_model`)."""
  return _initial_model(parts)[0]


def initial_local(parts) -> List[tf.Tensor]:
  """A new client's local state: its model-local variables (`_initial_model`), then the
  algorithm's client state (zeros of the global shapes: SCAFFOLD's `c_i`, FedDyn's gradient
  state)."""
  return initial_values(parts)[1]


def initial_control(parts) -> List[tf.Tensor]:
  """The algorithm's server arrays (SCAFFOLD's `c`, FedDyn's `h`, the server optimizer's
  state), or zeros of the global shapes when it keeps none."""
  specs = parts.layout.global_specs
  if parts.algorithm.server_state:
    return list(parts.algorithm.initial_control(specs))
  return [tf.zeros(s.shape, s.dtype) for s in specs]


def server_step(parts, global_values, control, mean_upload, clients) -> Tuple[list, list]:
  """`(new global values, new control)`: the algorithm's server step from the clients' mean
  upload (`mean_upload`: the update, one array per global variable, then the algorithm's
  extra arrays), or the old values when the mean is not finite (every client diverged, so the
  weights summed to 0), as TFF's own finalizer skips its step.

  Args:
    global_values: the server's global variables `x`, shapes of `parts.layout.global_specs`.
    control: the algorithm's server arrays (`parts.layout.control_specs`).
    mean_upload: the weighted mean of the uploads.
    clients: the round's total client weight (a float32 scalar).
  """
  n_global = len(parts.layout.global_specs)
  global_values, control, mean_upload = list(global_values), list(control), list(mean_upload)
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in mean_upload])
  new_global, new_control = parts.algorithm.server(
      global_values, control, mean_upload[:n_global], mean_upload[n_global:], clients,
      parts.settings.server_learning_rate)
  keep = lambda new, old: [tf.where(finite, n, o) for n, o in zip(new, old)]
  return keep(new_global, global_values), keep(new_control or control, control)


def received(algorithm, state, init_control) -> List[Any]:
  """What each client receives in the round of a Python server state `state`: the global
  variables, then the algorithm's server arrays when it broadcasts them (from
  `init_control()` when it keeps none in the state)."""
  if not algorithm.broadcast_control:
    return list(state['global_weights'])
  control = state['control'] if algorithm.server_state else init_control()
  return list(state['global_weights']) + list(control)


def outputs_per_example(element_spec: Any) -> float:
  """Labels per example: 1 for classification, the sequence length for next-character targets
  `(batch, length)`."""
  return float(np.prod(element_spec['y'].shape[1:]))


def train_metrics(parts, labels_per_example, loss_sum, examples, correct, diverged,
                  clients) -> collections.OrderedDict:
  """The round's `train` metrics from the clients' sums: `loss` and `accuracy` over the
  examples seen in training (NaN when no client's training counted: every client diverged or
  had no data, not 0), `num_examples`, `diverged_clients` and `bytes_downloaded` (what the
  broadcast to `clients` clients sent, `fedpara_tff.communication.broadcast_bytes`).

  Args:
    labels_per_example: `outputs_per_example` of the round's element spec.
    loss_sum, examples, correct: float32 sums over the clients; `diverged`, `clients`: int32.
  """
  passes = examples * float(parts.settings.local_epochs)
  mean = lambda total, count: tf.where(count > 0, tf.math.divide_no_nan(total, count),
                                       float('nan'))
  return collections.OrderedDict(
      loss=mean(loss_sum, passes),
      accuracy=mean(correct, passes * labels_per_example),
      num_examples=examples,
      diverged_clients=diverged,
      bytes_downloaded=communication.broadcast_bytes(clients, parts.layout.received_specs))
