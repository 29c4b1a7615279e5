r"""Starts N TFF workers on this host and keeps them running until interrupted.

Each is `experiments.worker`: an isolated TFF worker behind mutual TLS (`--tls_dir`, on every
interface), or behind plain gRPC on `--host` only (`--insecure`, default 127.0.0.1, after a
warning). Once every worker listens it prints the `--workers` value for the driver, then waits;
Ctrl-C (SIGINT, also when started in the background) or SIGTERM stops every worker it started,
and so does its watchdog when it is killed outright (SIGKILL). A worker that exits early is
reported and the others are stopped.

  python -m experiments.launch_workers --count=2 --base_port=8000 --tls_dir=certs
  python -m experiments.train ... --workers=127.0.0.1:8000,127.0.0.1:8001 --workers_tls_dir=certs
"""

import signal
import socket
import subprocess
import sys
import time

from absl import flags
import psutil

from experiments import flagfiles
from experiments import worker_service
from fedpara_tff import runtime
from fedpara_tff import worker_watchdog

_COUNT = flags.DEFINE_integer('count', 2, 'Workers to start (>= 1).')
_BASE_PORT = flags.DEFINE_integer('base_port', 8000, 'Port of the first worker; then +1 each.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address the driver should use in --workers; '
                            'with --insecure, the only address the workers listen on.')
_CONCURRENCY = flags.DEFINE_integer('max_concurrent_computation_calls', -1,
                                    'Passed to each worker (-1: no limit).')
_TLS_DIR = flags.DEFINE_string('tls_dir', '', 'Folder with ca.pem, worker.pem, worker.key '
                               '(scripts/make_worker_certs.sh): the workers serve mutual TLS.')
_INSECURE = flags.DEFINE_bool('insecure', False, 'Plain, unauthenticated gRPC on --host only.')
flags.register_validator('count', lambda v: v >= 1, message='--count must be >= 1.')
START_TIMEOUT_S = 60.0


def start(ports, concurrency=-1, tls_dir=None, host='127.0.0.1'):
  """Starts one `experiments.worker` per port (each must be free); returns the
  `subprocess.Popen`s.

  With `tls_dir`, mutual TLS on every interface in front of an isolated worker; without, plain
  gRPC on `host` only (loopback by default) in front of the same isolated worker.
  """
  for port in ports:
    worker_service.check_port_free(port, 'launch_workers')
  security = [f'--tls_dir={tls_dir}'] if tls_dir else ['--insecure', f'--bind={host}']
  processes = []
  try:
    for port in ports:
      # Each in its own session: a Ctrl-C at the terminal reaches this process only, which stops
      # them (`stop`), instead of interrupting a worker's Python as it starts (a fatal-error
      # traceback); the watchdog stops them should this process die another way.
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'experiments.worker', f'--port={port}',
           f'--max_concurrent_computation_calls={concurrency}', *security],
          stdout=subprocess.DEVNULL, start_new_session=True))
      runtime.guard_processes([processes[-1].pid])   # stopped with this process, however it dies
  except BaseException:   # interrupted half-way: none is left behind
    stop(processes)
    raise
  return processes


def wait_listening(host, ports, processes, timeout=START_TIMEOUT_S):
  """Returns once `host:port` accepts a connection for every port; SystemExit (one line) if a
  worker exits or `timeout` passes first."""
  deadline = time.monotonic() + timeout
  for port, process in zip(ports, processes):
    while True:
      if process.poll() is not None:
        raise SystemExit(f'launch_workers: the worker on port {port} exited with code '
                         f'{process.returncode} before it listened (its error is above).')
      try:
        socket.create_connection((host, port), timeout=1.0).close()
        break
      except OSError:
        if time.monotonic() > deadline:
          raise SystemExit(f'launch_workers: the worker on port {port} did not listen on '
                           f'{host}:{port} within {timeout:g} s.') from None
        time.sleep(0.05)


def stop(processes, timeout=10.0):
  """SIGTERM, then SIGKILL after `timeout` seconds, to every process still running
  (`fedpara_tff.worker_watchdog.stop`); then each is reaped. A child not yet reaped keeps its
  pid, so the pid names it. SIGTERM ends a worker still starting without a traceback, and a
  serving one as SIGINT does (`fedpara_tff.worker_tls.serve`)."""
  running = [psutil.Process(process.pid) for process in processes if process.poll() is None]
  worker_watchdog.stop(running, grace_s=timeout, signum=signal.SIGTERM)
  for process in processes:
    process.wait()


def main(argv):
  flagfiles.no_positional(argv, 'launch_workers')
  worker_service.check_security_choice(_TLS_DIR.value, _INSECURE.value, 'launch_workers')
  ports = [_BASE_PORT.value + i for i in range(_COUNT.value)]
  # As experiments.train: SIGINT works also when started in the background (where the shell
  # ignores it for its children), SIGTERM like SIGINT, and a watchdog stops the workers if this
  # process is killed outright (SIGKILL).
  runtime.sigterm_as_keyboard_interrupt()
  runtime.guard_workers()
  if _INSECURE.value:
    print(f'launch_workers: warning: --insecure: the workers serve TFF computations on '
          f'{_HOST.value} without authentication: anyone who reaches that address can run code '
          f'as this user.', file=sys.stderr, flush=True)
  processes = []
  try:
    processes = start(ports, _CONCURRENCY.value, _TLS_DIR.value or None, _HOST.value)
    wait_listening(_HOST.value, ports, processes)
    print('--workers=' + ','.join(f'{_HOST.value}:{p}' for p in ports), flush=True)
    while True:
      for port, process in zip(ports, processes):
        if process.poll() is not None:
          raise SystemExit(f'launch_workers: the worker on port {port} exited with code '
                           f'{process.returncode} (port in use?); stopping the others.')
      time.sleep(1)
  except KeyboardInterrupt:
    pass
  finally:
    stop(processes)


if __name__ == '__main__':
  flagfiles.run_main(main)
