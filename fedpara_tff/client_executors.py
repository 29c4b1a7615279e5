"""Client executors: what runs a round's sampled clients, injected into the round's driver.

A driver (`fedpara_tff.personalization.PersonalizedDriver`) reads the sampled clients' state,
hands their datasets to its client executor and stores the state that comes back. An executor
(`ClientExecutor`) runs the round where it says: the initial state, each round (the clients'
work and the round's `finish_round`: aggregation, server step, metrics;
`fedpara_tff.stateful_round`) and the personalised evaluation. Two are provided, running the
same client function and the same server functions, so the same seed gives the same weights
and bytes:

* `TFFClients`: the whole round as one TFF computation, on a TFF execution context of its own
  or, by default, the installed one. Two kinds, interchangeable:
  - TFF local (the default, `TFFClients` itself): the installed context, i.e. after
    `fedpara_tff.runtime.install()` this process's own local worker, which no other host can
    reach (`fedpara_tff.local_worker`);
  - TFF remote workers: `fedpara_tff.distributed.RemoteWorkers(addresses)`, TFF's mergeable
    context over those workers, one sub-round of the clients each; no local worker;
* `fedpara_tff.tf_backend.DeviceClients`: everything as TensorFlow in this process, the
  clients on its devices (GPUs, or the CPU): no TFF worker at all
  (`fedpara_tff.tf_backend.on_devices(devices)`).

A driver takes an executor factory, `round -> executor` (the executor needs the round's
computations, which the driver builds), and installs this project's local TFF runtime
(`fedpara_tff.runtime.install_unless_chosen`) only for an executor that `uses_local_runtime`.
"""

import contextlib
import functools
from typing import Any, ContextManager, List, Protocol, Sequence, Tuple

import tensorflow_federated as tff


def in_client_order(positions, values):
  """`values` (one per client, in the order TFF returned them) sorted by each client's position
  in the round (TFF's multi-worker context returns them in the order its sub-rounds finish)."""
  ordered = [None] * len(values)
  for position, value in zip(positions, values):
    ordered[int(position)] = value
  return ordered


def running_on(context):
  """A context manager running TFF computations on `context` (None: the installed one)."""
  if context is None:
    return contextlib.nullcontext()
  return tff.framework.get_context_stack().install(context)


class ClientExecutor(Protocol):
  """What a driver asks of its client executor (`TFFClients`, `tf_backend.DeviceClients`)."""

  uses_local_runtime: bool   # whether it runs TFF computations on the installed local context

  def running(self) -> ContextManager[Any]:
    """A context manager: where its TFF computations run, if it runs any."""

  def initialize(self) -> Any:
    """The server state of a new run (TFF's `initialize` structure)."""

  def init_local(self) -> List[Any]:
    """A new client's local state."""

  def train(self, state: Any, client_ids: Sequence[Any], datasets: Sequence[Any],
            local_states: Sequence[List[Any]]) -> Tuple[Any, List[List[Any]], Any]:
    """One round: `(state, new local states in the clients' order, metrics)`."""

  def evaluate(self, global_values: List[Any], datasets: Sequence[Any],
               local_states: Sequence[List[Any]]) -> List[Any]:
    """Each client's `OrderedDict(accuracy, num_examples)`, in the clients' order."""


class ServerHalf:
  """`initialize` and `init_local` of a client executor, from its `server` (the round's TFF
  computations, or `fedpara_tff.in_process_round.InProcessRound`), inside its `running()`."""

  def initialize(self):
    """The server state of a new run."""
    with self.running():
      return self.server.initialize()

  def init_local(self):
    """A new client's local state."""
    with self.running():
      return self.server.init_local()


class TFFClients(ServerHalf):
  """Trains the sampled clients with the round's TFF computation (`StatefulRound.next`).

  Args:
    round_: the driver's `fedpara_tff.stateful_round.StatefulRound`.
    context: the TFF execution context to run on (default: the installed one).
  """

  def __init__(self, round_, context=None):
    self.round = round_
    self.context = context
    # TFF's round (`StatefulRound.next`, which traces the client update) is built now, with the
    # rest of the driver: traced later, after the run made its evaluation model, the trace's
    # Keras 2 layers (made in a TF1 graph) swap the layer classes to v1 and leave that eager model
    # unusable ("Your Layer or Model is in an invalid state"; docs/DESIGN.md, "TFF runtime facts").
    self._next = round_.next
    self._evaluate = round_.evaluate   # likewise
    self.server = round_   # its TFF computations
    self.uses_local_runtime = context is None

  def running(self):
    """Where this executor's TFF computations run (a context manager)."""
    return running_on(self.context)

  def evaluate(self, global_values, datasets, local_states):
    """The round's TFF `evaluate`, where this executor runs; results in the clients' order."""
    with self.running():
      results, positions = self._evaluate(global_values, list(datasets),
                                          list(local_states), list(range(len(datasets))))
    return in_client_order(positions, results)

  def train(self, state, client_ids, datasets, local_states):
    """One round on TFF; returns `(state, new local states in the clients' order, metrics)`."""
    del client_ids  # TFF sees the clients by position
    with self.running():
      state, new_local, metrics, positions = self._next(
          state, list(datasets), list(local_states), list(range(len(datasets))))
    return state, [list(values) for values in in_client_order(positions, new_local)], metrics


def on_context(context):
  """A driver's `client_executor` factory: `TFFClients` on the TFF execution `context`."""
  return functools.partial(TFFClients, context=context)
