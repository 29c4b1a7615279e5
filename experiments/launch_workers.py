r"""Starts N TFF workers on this host and keeps them running until interrupted.

Prints the `--workers` value for the driver, then waits; Ctrl-C (SIGINT, also when started in
the background) or SIGTERM stops every worker it started, and so does its watchdog when it is
killed outright (SIGKILL). A worker that exits early is reported and the others are stopped.

  python -m experiments.launch_workers --count=2 --base_port=8000 --tls_dir=certs
  python -m experiments.train ... --workers=127.0.0.1:8000,127.0.0.1:8001 --workers_tls_dir=certs
"""

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
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address the driver should use in --workers.')
_CONCURRENCY = flags.DEFINE_integer('max_concurrent_computation_calls', -1,
                                    'Passed to each worker (-1: no limit).')
_TLS_DIR = flags.DEFINE_string('tls_dir', '', 'Folder with ca.pem, worker.pem, worker.key '
                               '(scripts/make_worker_certs.sh): the workers serve mutual TLS.')
_INSECURE = flags.DEFINE_bool('insecure', False, 'Plain, unauthenticated gRPC on every interface.')
flags.register_validator('count', lambda v: v >= 1, message='--count must be >= 1.')


def start(ports, concurrency=-1, tls_dir=None):
  """Starts one worker per port (each must be free); returns the `subprocess.Popen`s.

  With `tls_dir`, each is `experiments.worker --tls_dir` (mutual TLS in front of a worker in a
  private network namespace); without, TFF's plain worker on every interface.
  """
  for port in ports:
    worker_service.check_port_free(port, 'launch_workers')
  if tls_dir:
    return [subprocess.Popen([sys.executable, '-m', 'experiments.worker', f'--port={port}',
                              f'--max_concurrent_computation_calls={concurrency}',
                              f'--tls_dir={tls_dir}'], stdout=subprocess.DEVNULL)
            for port in ports]
  return [subprocess.Popen(worker_service.command(port, concurrency), stdout=subprocess.DEVNULL)
          for port in ports]


def stop(processes, timeout=10.0):
  """SIGINT, then SIGKILL after `timeout` seconds, to every process still running
  (`fedpara_tff.worker_watchdog.stop`); then each is reaped. A child not yet reaped keeps its
  pid, so the pid names it."""
  running = [psutil.Process(process.pid) for process in processes if process.poll() is None]
  worker_watchdog.stop(running, grace_s=timeout)
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
  processes = start(ports, _CONCURRENCY.value, _TLS_DIR.value or None)
  runtime.guard_processes([p.pid for p in processes])
  print('--workers=' + ','.join(f'{_HOST.value}:{p}' for p in ports), flush=True)
  try:
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
