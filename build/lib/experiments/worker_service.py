"""Where TFF's worker service is and how it is started (shared by the worker binaries)."""

import importlib.util
import os
import socket


def binary_path():
  """The `worker_binary` inside the installed tensorflow_federated package (no TF import)."""
  spec = importlib.util.find_spec('tensorflow_federated')
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('worker: tensorflow_federated is not installed (run `make setup`).')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'data', 'worker_binary')
  if not os.access(path, os.X_OK):
    raise SystemExit(f'worker: {path} is missing or not executable; reinstall '
                     f'tensorflow-federated==0.87.0.')
  return path


def command(port, concurrency=-1):
  """The worker's argv."""
  return [binary_path(), f'--port={port}', f'--max_concurrent_computation_calls={concurrency}']


def check_port_free(port, program='worker'):
  """Refuses a port something already listens on.

  TFF's worker binds with SO_REUSEPORT, so a second worker on a served port
  would start without error and share (or steal) its connections.
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.settimeout(1.0)
    if probe.connect_ex(('127.0.0.1', port)) == 0:
      raise SystemExit(f'{program}: port {port} is already in use (something listens on it); '
                       f'choose another port.')
