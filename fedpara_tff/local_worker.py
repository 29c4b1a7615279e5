"""TFF's local worker, reachable from this process only.

TFF 0.87 runs every computation in its C++ `worker_binary`, which its local execution context
starts with `--port=<free port>`; the worker listens on all interfaces and runs any computation
sent to it, unauthenticated (docs/DESIGN.md, "Who can reach a TFF worker"). `LocalWorker` starts
the same binary in a private network namespace instead (`unshare --net`, inside a user namespace
when this process is not root, so no privilege is needed), through `worker_bridge.py`, which
serves it on a Unix socket in a folder only this user can open. The driver talks gRPC to
`unix:<socket>`; nothing listens on any interface another host (or namespace) can reach.

Where the host cannot create the namespaces (user namespaces off, uid 0 without CAP_SYS_ADMIN,
a seccomp filter, as in Docker's default profile; or `unshare` missing), the worker is refused
in one line naming what was found and the ways out (`WorkerIsolationError`), the first of which
is the TF backend (`fedpara_tff.tf_backend`), which starts no TFF worker: it fails closed. A
process that needs no local worker at all installs `NoWorker`, which refuses to start one.
Only when the user asks for it in so many words (`allow_open=True`, the binaries'
`--allow_open_local_worker`, or the environment variable `FEDPARA_ALLOW_OPEN_LOCAL_WORKER=1`)
does the worker run as TFF runs it, on a TCP port of every interface (TFF 0.87's worker has no
flag to bind loopback only), after a warning that names the port and the exposure.

Imports only the standard library (and `worker_bridge`, which does too):
`fedpara_tff.distributed.local_context` builds the TFF execution context on top of it.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from fedpara_tff import worker_bridge

REQUIRE_ENV = 'FEDPARA_REQUIRE_ISOLATED_WORKER'
ALLOW_OPEN_ENV = 'FEDPARA_ALLOW_OPEN_LOCAL_WORKER'
START_TIMEOUT_S = worker_bridge.START_TIMEOUT_S
_BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'worker_bridge.py')
_FIX = ('run where a private network namespace can be made: on a host, unprivileged user '
        'namespaces on (sysctl user.max_user_namespaces > 0, and on Debian/Ubuntu '
        'kernel.unprivileged_userns_clone=1); in a container, a seccomp profile that allows '
        'unshare and CAP_SYS_ADMIN in the container (or, in Kubernetes, deploy/kubernetes\'s '
        'pod isolation)')
_NO_WORKER = ('the TF backend, which starts no TFF worker and needs no privilege (--backend=tf; '
              'in Python, client_executor=fedpara_tff.tf_backend.on_devices())')
_CAP_SYS_ADMIN = 21


class WorkerIsolationError(RuntimeError):
  """The local TFF worker cannot be isolated and isolation is required, or did not start."""


def worker_binary():
  """The path of TFF's `worker_binary` (found without importing TFF)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec('tensorflow_federated')
  if spec is None or not spec.submodule_search_locations:
    raise WorkerIsolationError('tensorflow_federated is not installed: no worker_binary.')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'data', 'worker_binary')
  if not os.path.isfile(path):
    raise WorkerIsolationError(f'TFF worker binary not found at {path}.')
  return path


@functools.lru_cache(maxsize=None)
def namespace_command():
  """`(prefix, None)`: the command prefix that runs a program in a new network namespace here,
  or `(None, reason)` when this host cannot (checked once per process, by running `true`)."""
  unshare = shutil.which('unshare')
  if unshare is None:
    return None, 'the unshare command (util-linux) is missing'
  candidates = [[unshare, '--user', '--map-root-user', '--net']]
  if os.geteuid() == 0:
    candidates.append([unshare, '--net'])
  reason = None
  for prefix in candidates:
    try:
      done = subprocess.run(prefix + ['true'], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
      reason = str(e)
      continue
    if done.returncode == 0:
      return prefix, None
    reason = ' '.join((done.stderr or f'exit {done.returncode}').split())
  return None, f'unshare failed: {reason}'


def _env_true(name):
  return os.environ.get(name, '').strip().lower() in ('1', 'true', 'yes')


def isolation_required(require_isolation=None):
  """`require_isolation`, or when None, whether `FEDPARA_REQUIRE_ISOLATED_WORKER` is 1/true/yes
  (isolation is required by default anyway: this only overrides `allow_open`)."""
  if require_isolation is not None:
    return bool(require_isolation)
  return _env_true(REQUIRE_ENV)


def open_worker_allowed(allow_open=None):
  """`allow_open`, or when None, whether `FEDPARA_ALLOW_OPEN_LOCAL_WORKER` is 1/true/yes."""
  if allow_open is not None:
    return bool(allow_open)
  return _env_true(ALLOW_OPEN_ENV)


def _status_field(name):
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith(name + ':'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return None


def isolation_blockers():
  """What this host shows that keeps a process from making a private network namespace, in
  words (the kernel's user-namespace limit, CAP_SYS_ADMIN, a seccomp filter); empty when none
  of them is seen."""
  found = []
  try:
    with open('/proc/sys/user/max_user_namespaces', encoding='ascii') as f:
      if int(f.read().strip() or 0) == 0:
        found.append('user namespaces are off (user.max_user_namespaces=0)')
  except (OSError, ValueError):
    pass
  effective = _status_field('CapEff')
  if effective is not None and not int(effective, 16) >> _CAP_SYS_ADMIN & 1:
    found.append(f'{"uid 0" if os.geteuid() == 0 else "this user"} without CAP_SYS_ADMIN')
  if _status_field('Seccomp') == '2':
    found.append("a seccomp filter (e.g. Docker's default profile) that may block unshare")
  return found


def check_isolation(require_isolation=None, allow_open=None):
  """Returns whether the local worker will be isolated; raises `WorkerIsolationError` (one line)
  when it cannot be and an open port was not allowed in so many words."""
  if require_isolation and allow_open:
    raise WorkerIsolationError('give require_isolation (--require_isolated_worker) or allow_open '
                               '(--allow_open_local_worker), not both.')
  prefix, reason = namespace_command()
  if prefix is not None:
    return True
  required = isolation_required(require_isolation)
  if required or not open_worker_allowed(allow_open):
    found = '; '.join(isolation_blockers() + [reason])
    way_out = (f'{_NO_WORKER}; {_FIX}.' if required else
               f'{_NO_WORKER}; {_FIX}; or, accepting that exposure while the run lasts, '
               f'--allow_open_local_worker ({ALLOW_OPEN_ENV}=1).')
    raise WorkerIsolationError(
        f'the local TFF worker cannot run in a private network namespace here ({found}), and '
        f'without one it would listen on every interface, unauthenticated: refused. Ways out: '
        f'{way_out}')
  return False


class LocalWorker:
  """One TFF `worker_binary` for this process, started on first use and restarted if it died.

  Args:
    max_concurrent_computation_calls: the worker's flag (-1: no limit), as TFF's local context.
    require_isolation: refuse to run the worker on an open port even when allowed (default:
      the environment variable `FEDPARA_REQUIRE_ISOLATED_WORKER`).
    allow_open: where no private network namespace can be made, run the worker on a TCP port of
      every interface instead of refusing (default: the environment variable
      `FEDPARA_ALLOW_OPEN_LOCAL_WORKER`).
    pod_network: run the worker on a TCP port of this network namespace without trying a
      private one, and without the open-port warning: for a Kubernetes pod, whose network
      namespace is the pod's own and whose NetworkPolicy admits no one to that port
      (`experiments.worker --isolation=pod`; docs/DESIGN.md, "Who can reach a TFF worker").
  """

  def __init__(self, max_concurrent_computation_calls=-1, require_isolation=None,
               allow_open=None, pod_network=False):
    self._flags = [f'--max_concurrent_computation_calls={max_concurrent_computation_calls}']
    self._require = require_isolation
    self._allow_open = allow_open
    self._pod_network = bool(pod_network)
    self._process = None
    self._folder = None
    self.target = None     # the gRPC target: unix:<path>, or localhost:<port> when not isolated
    self.isolated = None
    self._closed = False

  @property
  def pid(self):
    """The process this object started (the bridge, or the worker itself), or None."""
    return self._process.pid if self._process is not None else None

  def running(self):
    return self._process is not None and self._process.poll() is None

  def start(self):
    """Starts the worker (stopping a previous one); returns its gRPC target.

    Raises:
      WorkerIsolationError: isolation is required and impossible here, the worker did not
        start, or this worker was closed (its process is exiting).
    """
    self.stop()
    if self._closed:
      raise WorkerIsolationError('the local TFF worker was closed: this process is exiting.')
    if not self._pod_network:
      check_isolation(self._require, self._allow_open)
    command = [worker_binary()] + self._flags
    prefix, reason = (None, None) if self._pod_network else namespace_command()
    if prefix is None:
      port = worker_bridge.free_port()
      if not self._pod_network:
        sys.stderr.write(f'fedpara_tff: warning: open local worker allowed ({ALLOW_OPEN_ENV} or '
                         f'--allow_open_local_worker): TFF\'s local worker listens on every '
                         f'interface at port {port}, unauthenticated (TFF\'s worker cannot bind '
                         f'loopback only), so whoever reaches this host on port {port} can run '
                         f'code as this user while the run lasts; no private network namespace '
                         f'here ({reason}).\n')
        sys.stderr.flush()
      self._process = subprocess.Popen(command + [f'--port={port}'], stdin=subprocess.DEVNULL)
      self.target, self.isolated = f'localhost:{port}', False
      if not worker_bridge.wait_for_port(port, self._process):
        code = self._process.poll()
        self.stop()
        raise WorkerIsolationError(f'TFF worker did not listen on port {port} within '
                                   f'{START_TIMEOUT_S:g} s (exit code {code}).')
      return self.target
    self._folder = tempfile.mkdtemp(prefix='fedpara-worker-')   # mode 0700
    path = os.path.join(self._folder, 'worker.sock')
    self._process = subprocess.Popen(prefix + [sys.executable, '-I', _BRIDGE, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._process.stdin.write(json.dumps(command) + '\n')
    self._process.stdin.flush()
    line = self._process.stdout.readline()   # 'ready', or '' if the bridge failed
    if line.strip() != 'ready':
      code = self._process.wait()
      self.stop()
      raise WorkerIsolationError(f'the isolated TFF worker did not start (bridge exit code '
                                 f'{code}; its error is above).')
    self.target, self.isolated = f'unix:{path}', True
    return self.target

  def close(self):
    """Stops the worker for good: a computation still in flight (e.g. on another thread while
    the process exits) cannot start a new one."""
    self._closed = True
    self.stop()

  def stop(self):
    """Stops the worker (and its bridge); the next `start()` starts a new one."""
    process, self._process = self._process, None
    if process is not None and process.poll() is None:
      if process.stdin is not None:
        process.stdin.close()     # the bridge stops its worker and exits
      else:
        process.send_signal(signal.SIGINT)
      try:
        process.wait(5)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process is not None and process.stdout is not None:
      process.stdout.close()
    if self._folder is not None:
      shutil.rmtree(self._folder, ignore_errors=True)
      self._folder = None
    self.target = None


class NoWorker:
  """Stands in for the local worker in a process that needs none (the TF backend, remote
  workers): a TFF computation sent to the local context is refused instead of starting a worker,
  so nothing of this process ever listens.

  Args:
    reason: what this process runs instead, in words (e.g. 'the TF backend (--backend=tf)').
  """

  isolated = None
  pid = None
  target = None

  def __init__(self, reason):
    self.reason = reason

  def running(self):
    return False

  def start(self):
    raise WorkerIsolationError(f'{self.reason} runs without a local TFF worker, yet a TFF '
                               f'computation asked for one: refused, nothing was started.')

  def stop(self):
    pass

  def close(self):
    pass
