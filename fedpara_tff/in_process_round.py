"""The shared round's server half run in this Python process: the TF backend's, no TFF worker.

TFF 0.87 runs every TFF computation in its C++ `worker_binary`, a server on a socket
(docs/DESIGN.md, "Who can reach a TFF worker"). The TF backend (`fedpara_tff.tf_backend`)
trains the clients itself; `InProcessRound` gives it the rest of the round the same way, as
TensorFlow in this process, so that a TF-backend run starts no TFF worker and opens no socket:

* the initial server state, a new client's local state and the round's client learning rate;
* `finish_round`: the factor aggregator's weighted mean of the uploads (an upload with a NaN
  or Inf dropped and counted, `fedpara_tff.aggregators.drop_non_finite`), its communication
  figures, the algorithm's server step and the round's metrics
  (`fedpara_tff.server_half`, the functions TFF's round wraps), the kernel-mean refit when the
  round asks for it (`fedpara_tff.kernel_mean`) and the aggregation error of the factorised
  kernels (`fedpara_tff.aggregation_error`).

It returns what the TFF round returns, structure and values (the backends agree to 1e-5:
tests/test_tf_backend.py), so checkpoints and metrics do not depend on the backend. It runs the
factor aggregator's default inner factory, TFF's weighted mean; a round with another inner
factory (quantization, DP, compression: TFF aggregation processes) cannot run here
(`runs_in_process`), and the TF backend then runs that round's `finish_round` on TFF.
"""

import collections
import functools
from typing import Any, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from fedpara_tff import aggregation_error
from fedpara_tff import aggregators
from fedpara_tff import communication
from fedpara_tff import kernel_mean
from fedpara_tff import server_half

# The state and measurements of TFF's `MeanFactory` over its default sums (both empty), as
# TFF's round carries them: the in-process state is interchangeable with TFF's.
MEAN_STATE = (('value_sum_process', ()), ('weight_sum_process', ()))
MEAN_MEASUREMENTS = (('mean_value', ()), ('mean_weight', ()))


def why_not_in_process(round_) -> Optional[str]:
  """Why the server half of `round_` (a `fedpara_tff.stateful_round.StatefulRound`) cannot run
  in this process, or None when it can: its aggregation must be the factor aggregator's
  default weighted mean."""
  if round_.settings.quantization_bits is not None:
    return (f'quantization_bits={round_.settings.quantization_bits} is TFF\'s encoder, a TFF '
            f'aggregation process')
  if round_.inner_aggregator is not None:
    return f'the inner aggregator {type(round_.inner_aggregator).__name__} is a TFF factory'
  return None


def _numpy(structure):
  return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, structure)


class InProcessRound:
  """The server half of a `fedpara_tff.stateful_round.StatefulRound`, as TensorFlow in this
  process. The same methods as the round's TFF computations: `initialize`, `init_local`,
  `learning_rate_at`, `received`, `finish_round`.

  Raises:
    ValueError: the round's aggregation cannot run here (`why_not_in_process`).
  """

  def __init__(self, round_):
    reason = why_not_in_process(round_)
    if reason is not None:
      raise ValueError(f'this round\'s aggregation cannot run in this process: {reason}.')
    self.round = round_
    self.parts = round_.parts
    upload_specs = round_.parts.layout.global_specs * round_.algorithm.uploads
    self._bytes_per_client = communication.structure_bytes(upload_specs)
    self._elements_per_client = aggregators.elements(upload_specs)
    self._labels_per_example = server_half.outputs_per_example(round_.element_spec)

  def _server_state(self, global_weights, aggregator, round_num, control):
    fields = collections.OrderedDict(global_weights=list(global_weights), aggregator=aggregator,
                                     round_num=np.int32(round_num))
    if self.round.algorithm.server_state:
      fields['control'] = list(control)
    return fields

  @functools.cached_property
  def _initial(self) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """`(global values, a new client's local state)` of one new model
    (`fedpara_tff.server_half.initial_values`)."""
    globals_, locals_ = server_half.initial_values(self.parts)
    return _numpy(globals_), _numpy(locals_)

  def initialize(self) -> collections.OrderedDict:
    """The server state TFF's `initialize` returns: a new model's global variables, the mean's
    (empty) state, round 0 and the algorithm's server arrays when it keeps any."""
    return self._server_state([v.copy() for v in self._initial[0]],
                              collections.OrderedDict(MEAN_STATE), 0,
                              _numpy(server_half.initial_control(self.parts)))

  def init_local(self) -> List[np.ndarray]:
    """A new client's local state (`fedpara_tff.server_half.initial_local`)."""
    return [v.copy() for v in self._initial[1]]

  def init_control(self) -> List[np.ndarray]:
    """The algorithm's initial server arrays (zeros of the global shapes when it has none)."""
    return _numpy(server_half.initial_control(self.parts))

  def learning_rate_at(self, round_num) -> np.float32:
    """The client learning rate of round `round_num` (from 0)."""
    return np.float32(self.round.settings.learning_rate_at(round_num).numpy())

  def received(self, state) -> List[Any]:
    """What each client receives this round (`fedpara_tff.server_half.received`)."""
    return server_half.received(self.round.algorithm, state, self.init_control)

  def finish_round(self, state, uploads, weights, examples, loss_sums, correct, diverged):
    """`(state, metrics)` after the round whose clients returned these values (one entry per
    client, in order): the aggregation, the server step, the metrics, as TFF's round computes
    them (`StatefulRound.finish_round`), as one `tf.function` (traced once per number of
    clients)."""
    control = (state['control'] if self.round.algorithm.server_state
               else self.init_control())
    constants = lambda values, dtype=None: [tf.constant(v, dtype) for v in values]
    new_global, new_control, metrics = self._finish(
        constants(state['global_weights']), constants(control), [constants(u) for u in uploads],
        constants(weights, tf.float32), constants(examples, tf.float32),
        constants(loss_sums, tf.float32), constants(correct, tf.float32),
        constants(diverged, tf.int32))
    new_state = self._server_state(_numpy(new_global), state['aggregator'],
                                   int(state['round_num']) + 1, _numpy(new_control))
    return new_state, _numpy(metrics)

  @functools.cached_property
  def _finish(self):
    parts, maps = self.parts, self.parts.layout.kernels
    n_global = len(parts.layout.global_specs)
    refits = parts.settings.aggregation == 'kernel_mean'

    @tf.function
    def finish(global_values, control, uploads, weights, examples, loss_sums, correct,
               diverged):
      kept = [aggregators.drop_non_finite(upload, weight)
              for upload, weight in zip(uploads, weights)]
      weight_sum = _total([weight for _, weight, _ in kept])
      mean_upload = [_total([values[i] * weight for values, weight, _ in kept]) / weight_sum
                     for i in range(len(uploads[0]))]
      clients = tf.constant(len(uploads), tf.int32)
      if maps:
        updates = [upload[:n_global] for upload in uploads]
        mean_kernels = _mean_kernels(maps, global_values, updates, weights)
        if refits:
          mean_upload = kernel_mean.refit_update(maps, mean_kernels, global_values,
                                                 mean_upload[:n_global]) + mean_upload[n_global:]
      new_global, new_control = server_half.server_step(parts, global_values, control,
                                                        mean_upload, _total(weights))
      metrics = collections.OrderedDict(
          train=server_half.train_metrics(parts, self._labels_per_example, _total(loss_sums),
                                          _total(examples), _total(correct), _total(diverged),
                                          clients),
          aggregator=collections.OrderedDict(
              inner=collections.OrderedDict(MEAN_MEASUREMENTS),
              communication=aggregators.communication_figures(
                  clients, self._bytes_per_client, self._elements_per_client),
              clients=collections.OrderedDict(
                  (name, _total([counts[name] for _, _, counts in kept]))
                  for name in ('non_finite_clients', 'zero_weight_clients'))))
      if maps:
        metrics['aggregation_error'] = aggregation_error.measure(
            maps, mean_kernels, global_values, mean_upload[:n_global])
      return new_global, new_control, metrics

    return finish


def _mean_kernels(maps, global_values, updates, weights):
  """The clients' kernels `W(x - u_i)` averaged with the aggregation's weights (a client whose
  update is not finite weighs 0), as TFF's round computes them."""
  per_client = [aggregation_error.client_kernels(maps, global_values, update)
                for update in updates]
  kept = [tf.where(finite, w, 0.0) for (_, finite), w in zip(per_client, weights)]
  total = _total(kept)
  return [_total([kernels[k] * w for (kernels, _), w in zip(per_client, kept)]) / total
          for k in range(len(maps))]


def _total(values):
  """The sum of the tensors `values` in their order (as TFF's federated sum adds the
  clients')."""
  total = values[0]
  for value in values[1:]:
    total = total + value
  return total
