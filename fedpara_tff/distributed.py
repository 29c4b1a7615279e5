"""Running TFF computations on remote TFF workers (`worker_binary` over gRPC).

TFF 0.87's worker service is the C++ `worker_binary` in its wheel; a driver
talks to it with a remote executor over a gRPC channel. With several workers,
TFF's mergeable-computation execution context splits each round's clients into
sub-rounds, one per worker, and merges the results (docs/DESIGN.md, "TFF runtime facts"). This
module wraps that recipe (internal TFF 0.87 module paths, kept here only):

* `parse_addresses('host:port,host:port')` validates the flag value;
* `wait_until_reachable(addresses, timeout)` fails within `timeout` seconds,
  naming the workers that do not answer;
* `use_remote_workers(addresses)` installs the context; every later TFF
  computation runs on the workers. Each worker's share of the work (calls and
  client values) is counted in `WorkerShare`s;
* a worker that stops answering mid-computation makes the call raise
  `WorkerUnavailableError` naming it, after `failure_timeout` seconds, instead
  of TFF's endless retries;
* `use_local_runtime()` goes back to the local C++ runtime.
"""

import asyncio
import dataclasses
import socket
import time
from typing import List

import grpc
import tensorflow_federated as tff
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import executor_factory
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements
from tensorflow_federated.python.core.backends.native import compiler


HEALTH_CHECK_SECONDS = 1.0


class WorkerUnavailableError(RuntimeError):
  """A remote worker did not answer; `address` names it."""

  def __init__(self, address, detail):
    super().__init__(f'TFF worker {address} is unreachable ({detail})')
    self.address = address


def parse_addresses(spec):
  """`['host:port', ...]` from a comma-separated flag value.

  Raises:
    ValueError: empty list, a malformed entry (no host, a port outside
      1-65535) or a duplicate, naming the bad entry.
  """
  entries = [e.strip() for e in (spec or '').split(',') if e.strip()]
  if not entries:
    raise ValueError(f'workers must list at least one host:port; got {spec!r}.')
  seen = set()
  for entry in entries:
    host, _, port = entry.rpartition(':')
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
      raise ValueError(f'worker address {entry!r} is not host:port with a port in 1-65535.')
    if entry in seen:
      raise ValueError(f'worker address {entry!r} is listed twice.')
    seen.add(entry)
  return entries


def _answers(address, timeout):
  """True if a TCP connection to `address` opens within `timeout` seconds."""
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host, int(port)), timeout=timeout):
      return True
  except OSError:
    return False


def wait_until_reachable(addresses, timeout=20.0):
  """Waits until every worker accepts gRPC calls, or raises within `timeout` s.

  A gRPC channel becomes ready only after the HTTP/2 handshake, so a port
  served by something other than a gRPC server does not pass.

  Raises:
    WorkerUnavailableError: naming the first worker that was not ready in time.
  """
  deadline = time.monotonic() + timeout
  for address in addresses:
    channel = grpc.insecure_channel(address)
    try:
      grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
    except grpc.FutureTimeoutError:
      raise WorkerUnavailableError(
          address, f'no gRPC worker answered within {timeout:g} s; start one with '
          f'`python -m experiments.worker --port={address.rpartition(":")[2]}`') from None
    finally:
      channel.close()


@dataclasses.dataclass
class WorkerShare:
  """What one worker was given: computation calls and client values in them."""
  address: str
  calls: int = 0
  clients: int = 0


class _CountingFactory(executor_factory.ExecutorFactory):
  """Counts the executors asked of a worker, one per invocation, and their clients."""

  def __init__(self, inner, share):
    self._inner = inner
    self._share = share

  def create_executor(self, cardinalities):
    self._share.calls += 1
    self._share.clients += int(cardinalities.get(placements.CLIENTS, 0) or 0)
    return self._inner.create_executor(cardinalities)

  def clean_up_executor(self, cardinalities):
    self._inner.clean_up_executor(cardinalities)


class _WorkerContext(async_execution_context.AsyncExecutionContext):
  """The async context of one worker, which gives up when the worker stops answering."""

  def __init__(self, address, share, failure_timeout):
    self._address = address
    self._failure_timeout = failure_timeout
    self._channel = grpc.insecure_channel(address)
    stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self._channel)

    def stack_fn(cardinalities):
      if cardinalities.get(placements.CLIENTS) is None:  # e.g. initialize() has no clients
        cardinalities[placements.CLIENTS] = 0
      executor = remote_executor.RemoteExecutor(stub)
      executor.set_cardinalities(cardinalities)
      return executor

    factory = _CountingFactory(
        python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn), share)
    super().__init__(executor_fn=factory, compiler_fn=compiler.desugar_and_transform_to_native,
                     transform_args=tensorflow_computation.transform_args,
                     transform_result=tensorflow_computation.transform_result)

  async def invoke(self, comp, arg):
    call = asyncio.ensure_future(super().invoke(comp, arg))
    silent_since = None
    while True:
      done, _ = await asyncio.wait({call}, timeout=HEALTH_CHECK_SECONDS)
      if done:
        try:
          return call.result()
        except grpc.RpcError as e:
          raise WorkerUnavailableError(self._address, f'gRPC {e.code().name}') from e
      if _answers(self._address, HEALTH_CHECK_SECONDS):
        silent_since = None
        continue
      silent_since = silent_since or time.monotonic()
      if time.monotonic() - silent_since >= self._failure_timeout:
        call.cancel()
        raise WorkerUnavailableError(
            self._address, f'it stopped answering for {self._failure_timeout:g} s mid-call')


def use_remote_workers(addresses, connect_timeout=20.0, failure_timeout=10.0) -> List[WorkerShare]:
  """Runs every later TFF computation on `addresses`; returns their live `WorkerShare`s.

  One worker gets the whole computation; several get TFF's mergeable context,
  which gives each a sub-round of the clients.

  Args:
    addresses: `host:port` of running TFF workers (`parse_addresses`).
    connect_timeout: seconds to wait for all workers at start.
    failure_timeout: seconds a worker may stay unreachable mid-call before
      the call raises `WorkerUnavailableError`.
  """
  wait_until_reachable(addresses, connect_timeout)
  shares = [WorkerShare(a) for a in addresses]
  contexts = [_WorkerContext(a, s, failure_timeout) for a, s in zip(addresses, shares)]
  tff.backends.native.set_mergeable_comp_execution_context(contexts)
  return shares


def use_local_runtime():
  """Back to TFF's local C++ runtime (the default context)."""
  tff.backends.native.set_sync_local_cpp_execution_context()
