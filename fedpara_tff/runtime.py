"""TFF runtime housekeeping: quiet logs and no orphaned `worker_binary` processes.

TFF 0.87 runs computations in a C++ `worker_binary` subprocess that it stops
only from a destructor that often does not run at interpreter exit; the orphan
then keeps the parent's stdout/stderr pipes open (docs/DESIGN.md, "TFF runtime facts").
Importing this module registers an exit hook that stops the workers this
Python process started. That hook cannot run on SIGKILL, so
`tie_workers_to_this_process()` also makes every worker TFF starts afterwards
ask the kernel to kill it when its parent dies (`prctl(PR_SET_PDEATHSIG)`), and
`sigterm_as_keyboard_interrupt()` gives SIGTERM (what `timeout`, Docker,
Kubernetes and Slurm send) the clean shutdown of Ctrl-C.
"""

import atexit
import concurrent.futures
import ctypes
import gc
import os
import signal
import subprocess
import types

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import psutil  # pylint: disable=g-import-not-at-top

WORKER_NAME = 'worker_binary'


def _own_workers():
  workers = []
  for child in psutil.Process().children(recursive=True):
    try:
      if any(WORKER_NAME in part for part in child.cmdline()):
        workers.append(child)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      continue
  return workers


def shutdown_workers(timeout=5.0):
  """Stops this process's TFF workers (SIGINT, then SIGKILL); returns how many."""
  workers = _own_workers()
  for worker in workers:
    try:
      worker.send_signal(signal.SIGINT)
    except psutil.NoSuchProcess:
      pass
  _, alive = psutil.wait_procs(workers, timeout=timeout)
  for worker in alive:
    try:
      worker.kill()
    except psutil.NoSuchProcess:
      pass
  return len(workers)


_PR_SET_PDEATHSIG = 1


def _die_with_parent():
  """In the child, between fork and exec: SIGKILL this process when its parent dies.

  Also clears the signal mask inherited from the forking thread, so that the worker still stops
  on the SIGINT TFF sends it.
  """
  signal.pthread_sigmask(signal.SIG_SETMASK, [])
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# The parent-death signal follows the *thread* that forked the child, not the process: a worker
# forked from a short-lived thread would be killed when that thread ends. Every tied child is
# therefore forked from this one thread, which lives as long as the process.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix='tff-worker-spawner')


class _TiedPopen(subprocess.Popen):
  """`subprocess.Popen` whose child dies with this process (Linux), even on SIGKILL."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('preexec_fn', _die_with_parent)
    init = super().__init__
    _SPAWNER.submit(init, *args, **kwargs).result()


def tie_workers_to_this_process():
  """Makes the `worker_binary` processes TFF starts from now on die with this process.

  TFF's `executor_factory` starts them with `subprocess.Popen`; its module's
  `subprocess` name is pointed at a copy whose `Popen` sets the parent-death
  signal, forking from one long-lived thread (the signal follows the forking
  thread), so it fires when this process exits, also on SIGKILL, and never
  while it runs. Idempotent; returns True when installed.
  """
  from tensorflow_federated.python.core.impl.executor_stacks import executor_factory  # pylint: disable=g-import-not-at-top
  if getattr(executor_factory.subprocess, 'Popen', None) is _TiedPopen:
    return True
  _SPAWNER.submit(lambda: None).result()   # start the spawner thread from this (caller's) thread
  shim = types.ModuleType('subprocess_tied_to_parent')
  shim.__dict__.update(subprocess.__dict__)
  shim.Popen = _TiedPopen
  executor_factory.subprocess = shim
  return True


class Terminated(KeyboardInterrupt):
  """SIGTERM, delivered like Ctrl-C; `signum` is the signal's number."""

  def __init__(self, signum):
    super().__init__(f'signal {signal.Signals(signum).name}')
    self.signum = signum


def _raise_terminated(signum, frame):
  del frame
  raise Terminated(signum)


def sigterm_as_keyboard_interrupt():
  """SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, as SIGINT does."""
  signal.signal(signal.SIGTERM, _raise_terminated)


def _disarm_service_managers():
  """Silences the destructor of TFF's `ServiceManager` once its workers are stopped.

  That destructor runs during interpreter teardown, when the `subprocess` module
  is already gone, and prints an AttributeError traceback on every exit.
  """
  for cls in {type(obj) for obj in gc.get_objects()
              if type(obj).__name__ == 'ServiceManager' and hasattr(obj, '_process')}:
    cls.__del__ = lambda self: None


def _at_exit():
  shutdown_workers()
  _disarm_service_managers()


atexit.register(_at_exit)
