"""TFF runtime housekeeping: quiet logs and no orphaned `worker_binary` processes.

TFF 0.87 runs computations in a C++ `worker_binary` subprocess that it stops
only from a destructor that often does not run at interpreter exit; the orphan
then keeps the parent's stdout/stderr pipes open (docs/DESIGN.md, "TFF runtime facts").

Nothing happens at import but one default: `TF_CPP_MIN_LOG_LEVEL=3` when unset
(TensorFlow's C++ start-up logs, read once when TensorFlow loads, which is why
this cannot wait for a call). The housekeeping is explicit:

* `install()` (the binaries and the test session call it first; library users
  call it, or enter `managed()`): runs TFF's computations on a local worker that
  only this process can reach (`fedpara_tff.local_worker`: a private network
  namespace and a Unix socket, instead of TFF's port on every interface; or, where
  the host cannot, TFF's port after a warning, or a refusal when isolation is
  required), restores an inherited ignored SIGINT,
  registers the exit hook that stops the workers this Python process started
  (and silences TFF's `ServiceManager` destructor, which would print a traceback
  during interpreter teardown), and starts the watchdog process
  (`fedpara_tff/worker_watchdog.py`) that stops them after a SIGKILL, which no
  hook survives;
* `managed()`: a context manager that installs and stops the workers on leaving;
* `sigterm_as_keyboard_interrupt()` gives SIGTERM (what `timeout`, Docker,
  Kubernetes and Slurm send) the clean shutdown of Ctrl-C, for binaries.
"""

import atexit
import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterator, Optional

import psutil

from fedpara_tff import worker_watchdog

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def shutdown_workers(timeout: float = worker_watchdog.GRACE_S, final: bool = False) -> int:
  """Stops this process's TFF workers (SIGINT, then SIGKILL after `timeout` s); returns how
  many it had to signal. `final` (at exit): the local worker cannot be restarted afterwards by
  a computation still in flight."""
  for context in _INSTALLED:
    if final:
      context.local_worker.close()   # its bridge stops the worker and exits
    else:
      context.local_worker.stop()
  workers = worker_watchdog.still_running(worker_watchdog.record_workers(psutil.Process(), {}))
  worker_watchdog.stop(workers, timeout)
  return len(workers)


_WATCHDOG = []  # the watchdog's Popen; its stdin pipe must stay open as long as this process


def guard_workers():
  """Starts the worker watchdog for this process (once); returns its pid.

  The watchdog (`fedpara_tff/worker_watchdog.py`) holds the read end of a pipe
  whose write end only this process holds; when this process exits for any
  reason, SIGKILL included, the pipe reads end-of-file and the watchdog stops
  the `worker_binary` processes this process had started.
  """
  if _WATCHDOG and _WATCHDOG[0].poll() is None:
    return _WATCHDOG[0].pid
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'worker_watchdog.py')
  watchdog = subprocess.Popen([sys.executable, '-I', script, str(os.getpid())],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
  _WATCHDOG[:] = [watchdog]
  return watchdog.pid


def guard_processes(pids):
  """Has the watchdog (`guard_workers`) also stop the processes `pids` when this process exits,
  however it dies (SIGKILL included)."""
  guard_workers()
  pipe = _WATCHDOG[0].stdin
  pipe.write(''.join(f'{int(pid)}\n' for pid in pids).encode('ascii'))
  pipe.flush()


class Terminated(KeyboardInterrupt):
  """SIGTERM, delivered like Ctrl-C; `signum` is the signal's number."""

  def __init__(self, signum):
    super().__init__(f'signal {signal.Signals(signum).name}')
    self.signum = signum


def _raise_terminated(signum, frame):
  del frame
  raise Terminated(signum)


def exit_now(code):
  """Stops this process's workers, flushes stdout / stderr and exits with `code` at once.

  For a run stopped by a signal: Ctrl-C in a terminal or `kill -TERM -PGID` also reaches the TFF
  workers, and the finalizers of values held by a dead worker would print gRPC tracebacks at
  interpreter exit. Nothing the run owns is lost: checkpoints and metrics are written and closed
  before this is called. Errors raised where Python can only report them (a finalizer that
  disposes of a value on the dead worker, run while the context is torn down) are not printed:
  the process is exiting on purpose, and they are that exit's noise.
  """
  sys.unraisablehook = lambda unraisable: None
  shutdown_workers(final=True)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


def restore_sigint():
  """Gives SIGINT back its Python handler when this process inherited it ignored.

  A job started with `&` from a non-interactive shell (nohup, CI wrappers) starts with SIGINT
  ignored, and `exec` keeps an ignored signal ignored, so every TFF worker it forks ignores the
  SIGINT that TFF's `ServiceManager.__del__` sends before waiting for it without a bound: the
  process hangs when the execution context is replaced. Returns True when it changed anything.
  """
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    return False
  signal.signal(signal.SIGINT, signal.default_int_handler)
  return True


def sigterm_as_keyboard_interrupt():
  """SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, as SIGINT does; an
  inherited ignored SIGINT is restored first (`restore_sigint`)."""
  restore_sigint()
  signal.signal(signal.SIGTERM, _raise_terminated)


def _service_manager(context=None):
  """The `ServiceManager` (TFF's local worker process) of `context` (default: the installed TFF
  execution context), or None: TFF not loaded (then none can exist, and TFF is not loaded for
  the question), or the context is not TFF's local C++ one (`tff_internals.service_manager`)."""
  if 'tensorflow_federated' not in sys.modules:
    return None
  from fedpara_tff import tff_internals  # pylint: disable=g-import-not-at-top  # loads TFF
  return tff_internals.service_manager(context)


def quiet_teardown():
  """Silences the destructor of TFF's `ServiceManager` once its worker is stopped.

  That destructor runs during interpreter teardown, when the `subprocess` module is already
  gone (`None`), and prints an AttributeError traceback on every exit: it reads
  `subprocess.Popen` whatever the manager holds. Each TFF context defines its own
  `ServiceManager` class; the installed one's loses its destructor. Binaries call this before
  parsing their flags (a flag error exits before `install()`); `install()` calls it too.
  """
  manager = _service_manager()
  if manager is not None:
    type(manager).__del__ = lambda self: None


def _at_exit():
  shutdown_workers(final=True)
  quiet_teardown()


_INSTALLED = []   # the local execution context install() set, once installed


def install(require_isolation: Optional[bool] = None,
            allow_open: Optional[bool] = None,
            worker: bool = True, without_worker: str = 'this process') -> Optional[int]:
  """Tidies TFF's runtime for this process (idempotent; see the module docstring).

  The first call makes TFF's default execution context this process's own local worker
  (`fedpara_tff.distributed.use_local_runtime`), which starts on the first computation; with
  `worker=False`, a context that refuses to start any worker (`local_worker.NoWorker`), for a
  process whose computations all run elsewhere (the TF backend, remote workers). A later call
  with `worker=True` gives that context a real local worker.

  Args:
    require_isolation: refuse (`fedpara_tff.local_worker.WorkerIsolationError`, raised here)
      when this host cannot keep the local worker off the network, even if `allow_open`;
      default: the environment variable `FEDPARA_REQUIRE_ISOLATED_WORKER`.
    allow_open: where this host cannot keep the local worker off the network, run it on an
      open port (with a warning) instead of refusing, which is the default; default: the
      environment variable `FEDPARA_ALLOW_OPEN_LOCAL_WORKER`.
    worker: whether this process may start a local TFF worker at all.
    without_worker: with `worker=False`, what the process runs instead, for the refusal.

  Returns:
    The worker watchdog's pid (None with `worker=False`: there is nothing to watch).
  """
  from fedpara_tff import distributed    # pylint: disable=import-outside-toplevel  # loads TFF
  from fedpara_tff import local_worker   # pylint: disable=import-outside-toplevel
  if not _INSTALLED:
    quiet_teardown()   # TFF's own local context, replaced below, never starts a worker
    restore_sigint()
    atexit.register(_at_exit)
  if not worker:
    if not _INSTALLED:
      _INSTALLED.append(distributed.use_local_runtime(local_worker.NoWorker(without_worker)))
    return None
  if not _INSTALLED or isinstance(_INSTALLED[0].local_worker, local_worker.NoWorker):
    local_worker.check_isolation(require_isolation, allow_open)
    _INSTALLED[:] = [distributed.use_local_runtime(
        local_worker.LocalWorker(require_isolation=require_isolation, allow_open=allow_open))]
  return guard_workers()


def _is_tff_native_local(context) -> bool:
  """Whether `context` is TFF's native local C++ context (`tff_internals.is_native_local`)."""
  from fedpara_tff import tff_internals  # pylint: disable=g-import-not-at-top  # loads TFF
  return tff_internals.is_native_local(context)


def install_unless_chosen() -> bool:
  """`install()`, unless it ran or the current TFF context is not TFF's native local one.

  The drivers call it before their first computation: TFF's native local context starts a
  worker that listens on every interface and can outlive this process; `install()` runs the
  same native runtime on a worker only this process reaches. Any other context the user set (a
  remote or test context, or one from `fedpara_tff.distributed`) is kept; so is this project's
  local one, unless it was installed without a worker (`install(worker=False)`) and is the
  current context: then it gets its worker, under the isolation rule. Returns whether
  `install()` ran now.
  """
  if 'tensorflow_federated' not in sys.modules:
    return False
  context = sys.modules['tensorflow_federated'].framework.get_context_stack().current
  if _INSTALLED:
    from fedpara_tff import local_worker   # pylint: disable=import-outside-toplevel
    if context is not _INSTALLED[0] or not isinstance(context.local_worker,
                                                      local_worker.NoWorker):
      return False
  elif not _is_tff_native_local(context):
    return False
  install()
  return True


def installed() -> bool:
  """True once `install()` has run in this process."""
  return bool(_INSTALLED)


@contextlib.contextmanager
def managed() -> Iterator[None]:
  """`with fedpara_tff.runtime.managed():` runs `install()`, and on leaving stops the TFF
  workers this process started (TFF starts new ones on its next computation)."""
  install()
  try:
    yield
  finally:
    shutdown_workers()
