"""Client executors: what trains a round's sampled clients, injected into the round's driver.

A driver (`fedpara_tff.personalization.PersonalizedDriver`) reads the sampled clients' state,
hands their datasets to its client executor and stores the state that comes back. An executor
has one method,

    train(state, client_ids, datasets, local_states) -> (state, new local states, metrics)

which runs the clients' work and the round's `finish_round` (aggregation, server step, metrics;
`fedpara_tff.stateful_round`). Two are provided, both running the same client function and the
same `finish_round`, so the same seed gives the same weights and bytes:

* `TFFClients` (the default): the whole round as one TFF computation, on whichever TFF
  execution context is installed: TFF's local worker, or remote workers
  (`fedpara_tff.distributed.use_remote_workers`);
* `fedpara_tff.tf_backend.DeviceClients`: the clients as `tf.function`s on this process's
  devices (GPUs, or the CPU), then `finish_round` on TFF.

A driver takes an executor factory, `round -> executor` (the executor needs the round's
computations, which the driver builds): `TFFClients` itself, or
`fedpara_tff.tf_backend.on_devices(devices)`.
"""


def in_client_order(positions, values):
  """`values` (one per client, in the order TFF returned them) sorted by each client's position
  in the round (TFF's multi-worker context returns them in the order its sub-rounds finish)."""
  ordered = [None] * len(values)
  for position, value in zip(positions, values):
    ordered[int(position)] = value
  return ordered


class TFFClients:
  """Trains the sampled clients with the round's TFF computation (`StatefulRound.next`).

  Args:
    round_: the driver's `fedpara_tff.stateful_round.StatefulRound`.
  """

  def __init__(self, round_):
    self.round = round_

  def train(self, state, client_ids, datasets, local_states):
    """One round on TFF; returns `(state, new local states in the clients' order, metrics)`."""
    del client_ids  # TFF sees the clients by position
    state, new_local, metrics, positions = self.round.next(
        state, list(datasets), list(local_states), list(range(len(datasets))))
    return state, [list(values) for values in in_client_order(positions, new_local)], metrics
