"""Running TFF computations on remote TFF workers (`worker_binary` over gRPC).

TFF 0.87's worker service is the C++ `worker_binary` in its wheel; a driver
talks to it with a remote executor over a gRPC channel. With several workers,
TFF's mergeable-computation execution context splits each round's clients into
sub-rounds, one per worker, and merges the results (docs/DESIGN.md, "TFF runtime facts"). This
module wraps that recipe (TFF 0.87's internal pieces come from `fedpara_tff.tff_internals`):

* `parse_addresses('host:port,host:port')` validates the flag value;
* `wait_until_reachable(addresses, timeout)` fails within `timeout` seconds,
  naming the workers that do not answer;
* `RemoteWorkers(addresses)` is a driver's client executor on those workers
  (`fedpara_tff.client_executors`): the driver's computations run on them, and
  each worker's share of the work (calls and client values) is counted in its
  `WorkerShare`s; `use_remote_workers(addresses)` installs the same context for
  every later TFF computation of the process (e.g. TFF's own `tff.learning`
  processes);
* a worker that stops answering mid-computation makes the call raise
  `WorkerUnavailableError` naming it, after `failure_timeout` seconds, instead
  of TFF's endless retries;
* `local_context(worker)` is the execution context of this process's own worker
  (`fedpara_tff.local_worker.LocalWorker`, reachable from this process only), built as TFF's
  local C++ context is (same executor, compiler and transforms; only the channel differs), and
  `use_local_runtime()` installs it.
"""

import asyncio
import dataclasses
import socket
import time
from typing import List

import grpc
import tensorflow_federated as tff

from fedpara_tff import client_executors
from fedpara_tff import local_worker
from fedpara_tff import tff_internals


HEALTH_CHECK_SECONDS = 1.0
# As TFF's local context: messages up to 2 GB.
_LOCAL_CHANNEL_OPTIONS = [(name, 2 * 1000 * 1000 * 1000) for name in (
    'grpc.max_message_length', 'grpc.max_receive_message_length', 'grpc.max_send_message_length')]


class WorkerUnavailableError(RuntimeError):
  """A remote worker did not answer; `address` names it."""

  def __init__(self, address, detail, reachable=False):
    super().__init__(f'TFF worker {address} answers but {detail}' if reachable else
                     f'TFF worker {address} is unreachable ({detail})')
    self.address = address


def _endpoint(host, port):
  """`(addresses the host resolves to, port)`: two entries naming one worker share a port and an
  address (`localhost:8000` and `127.0.0.1:8000`; `:08000` and `:8000`). A host that does not
  resolve here is compared by name."""
  try:
    addresses = {info[4][0] for info in socket.getaddrinfo(host.strip('[]'), None)}
  except (socket.gaierror, UnicodeError):
    addresses = {host.lower()}
  return addresses, int(port)


def parse_addresses(spec):
  """`['host:port', ...]` from a comma-separated flag value.

  Raises:
    ValueError: empty list, a malformed entry (no host, a port outside
      1-65535) or one worker listed twice (also under another name or port spelling), naming
      the bad entry.
  """
  entries = [e.strip() for e in (spec or '').split(',') if e.strip()]
  if not entries:
    raise ValueError(f'workers must list at least one host:port; got {spec!r}.')
  seen = []
  for entry in entries:
    host, _, port = entry.rpartition(':')
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
      raise ValueError(f'worker address {entry!r} is not host:port with a port in 1-65535.')
    addresses, number = _endpoint(host, port)
    for other, (other_addresses, other_number) in seen:
      if number == other_number and addresses & other_addresses:
        same = 'is listed twice' if entry == other else f'names the same worker as {other!r}'
        raise ValueError(f'worker address {entry!r} {same} (port {number} of '
                         f'{sorted(addresses & other_addresses)[0]}).')
    seen.append((entry, (addresses, number)))
  return entries


def _answers(address, timeout):
  """True if a TCP connection to `address` opens within `timeout` seconds."""
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host, int(port)), timeout=timeout):
      return True
  except OSError:
    return False


def _channel(address, credentials=None):
  """A gRPC channel to `address`: mutual TLS with `credentials`
  (`fedpara_tff.worker_tls.channel_credentials`), else plain."""
  if credentials is None:
    return grpc.insecure_channel(address)
  return grpc.secure_channel(address, credentials)


def wait_until_reachable(addresses, timeout=20.0, credentials=None):
  """Waits until every worker accepts gRPC calls, or raises within `timeout` s.

  A gRPC channel becomes ready only after the HTTP/2 handshake (and, with `credentials`, the
  TLS handshake), so a port served by something other than a gRPC server does not pass.

  Raises:
    WorkerUnavailableError: naming the first worker that was not ready in time.
  """
  deadline = time.monotonic() + timeout
  for address in addresses:
    channel = _channel(address, credentials)
    try:
      grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
    except grpc.FutureTimeoutError:
      raise WorkerUnavailableError(
          address, f'no gRPC worker answered within {timeout:g} s'
          f'{" over mutual TLS (is it serving --tls_dir with this CA?)" if credentials else ""}; '
          f'start one with `python -m experiments.worker --port={address.rpartition(":")[2]}`'
          ) from None
    finally:
      channel.close()


@dataclasses.dataclass
class WorkerShare:
  """What one worker was given: computation calls and client values in them."""
  address: str
  calls: int = 0
  clients: int = 0


class _CountingFactory(tff_internals.ExecutorFactory):
  """Counts the executors asked of a worker, one per invocation, and their clients."""

  def __init__(self, inner, share):
    self._inner = inner
    self._share = share

  def create_executor(self, cardinalities):
    self._share.calls += 1
    self._share.clients += int(cardinalities.get(tff_internals.CLIENTS, 0) or 0)
    return self._inner.create_executor(cardinalities)

  def clean_up_executor(self, cardinalities):
    self._inner.clean_up_executor(cardinalities)


class _WorkerContext(tff_internals.AsyncExecutionContext):
  """The async context of one worker, which gives up when the worker stops answering."""

  def __init__(self, address, share, failure_timeout, credentials=None):
    self._address = address
    self._failure_timeout = failure_timeout
    self._channel = _channel(address, credentials)
    stub = tff_internals.RemoteExecutorGrpcStub(self._channel)

    def stack_fn(cardinalities):
      if cardinalities.get(tff_internals.CLIENTS) is None:  # e.g. initialize() has no clients
        cardinalities[tff_internals.CLIENTS] = 0
      executor = tff_internals.RemoteExecutor(stub)
      executor.set_cardinalities(cardinalities)
      return executor

    factory = _CountingFactory(
        tff_internals.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn), share)
    super().__init__(executor_fn=factory, **tff_internals.native_pipeline())

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


def remote_context(addresses, connect_timeout=20.0, failure_timeout=10.0, credentials=None):
  """TFF's mergeable execution context over the workers at `addresses`, which gives each a
  sub-round of the clients; returns `(context, their live WorkerShares)`.

  Args:
    addresses: `host:port` of running TFF workers (`parse_addresses`).
    connect_timeout: seconds to wait for all workers at start.
    failure_timeout: seconds a worker may stay unreachable mid-call before
      the call raises `WorkerUnavailableError`.
    credentials: the driver's mutual-TLS credentials
      (`fedpara_tff.worker_tls.channel_credentials`); None: plain gRPC.
  """
  wait_until_reachable(addresses, connect_timeout, credentials)
  shares = [WorkerShare(a) for a in addresses]
  contexts = [_WorkerContext(a, s, failure_timeout, credentials)
              for a, s in zip(addresses, shares)]
  return tff.backends.native.create_mergeable_comp_execution_context(contexts), shares


class RemoteWorkers:
  """A driver's client executor factory (`fedpara_tff.client_executors`): the sampled clients
  trained on the TFF workers at `addresses`; arguments as `remote_context`'s.

  Attributes:
    shares: each worker's `WorkerShare`, updated as the driver runs.
  """

  def __init__(self, addresses, connect_timeout=20.0, failure_timeout=10.0, credentials=None):
    self.context, self.shares = remote_context(addresses, connect_timeout, failure_timeout,
                                               credentials)

  def __call__(self, round_):
    return client_executors.TFFClients(round_, self.context)


def use_remote_workers(addresses, connect_timeout=20.0, failure_timeout=10.0,
                       credentials=None) -> List[WorkerShare]:
  """Runs every later TFF computation on `addresses`; returns their live `WorkerShare`s
  (arguments as `remote_context`'s)."""
  context, shares = remote_context(addresses, connect_timeout, failure_timeout, credentials)
  tff_internals.set_default_context(context)
  return shares


class _LocalStubs:
  """The gRPC stub of a `LocalWorker`, (re)starting the worker when it is not running."""

  def __init__(self, worker):
    self.worker = worker
    self._stub = None

  def get(self):
    if self._stub is None or not self.worker.running():
      target = self.worker.start()
      channel = grpc.insecure_channel(target, _LOCAL_CHANNEL_OPTIONS)
      self._stub = tff_internals.RemoteExecutorGrpcStub(channel)
      deadline = time.monotonic() + local_worker.START_TIMEOUT_S
      while not self._stub.is_ready:
        if time.monotonic() > deadline or not self.worker.running():
          self.worker.stop()
          raise WorkerUnavailableError(target, 'the local TFF worker did not answer')
        time.sleep(0.01)
    return self._stub


def local_context(worker=None):
  """A synchronous TFF execution context on `worker` (default: a new
  `fedpara_tff.local_worker.LocalWorker`), which starts on the first computation."""
  stubs = _LocalStubs(worker or local_worker.LocalWorker())

  def stack_fn(cardinalities):
    if cardinalities.get(tff_internals.CLIENTS) is None:
      cardinalities[tff_internals.CLIENTS] = 0
    executor = tff_internals.RemoteExecutor(stubs.get())
    executor.set_cardinalities(cardinalities)
    return executor

  context = tff_internals.SyncExecutionContext(
      executor_fn=tff_internals.ResourceManagingExecutorFactory(
          executor_stack_fn=stack_fn),
      **tff_internals.native_pipeline())
  context.local_worker = stubs.worker
  return context


def use_local_runtime(worker=None):
  """Runs every later TFF computation on a local worker only this process can reach
  (`local_context(worker)`); returns the context (`fedpara_tff.runtime.install()` calls it)."""
  context = local_context(worker)
  tff_internals.set_default_context(context)
  return context
