r"""Starts a TFF worker on this host: TFF 0.87's C++ `worker_binary`, serving on --port.

The driver (`python -m experiments.train --workers=host:port,... --workers_tls_dir=DIR`) sends it
computations; with several workers each gets a sub-round of the clients.

By default (`--tls_dir`) the worker runs in a private network namespace behind a Unix socket, as
local runs do, and --port serves mutual TLS in front of it: only a driver holding a certificate
signed by the run's CA gets through (`fedpara_tff.worker_tls`; make the files with
`scripts/make_worker_certs.sh`). `--insecure` serves TFF's plain gRPC on --port of every
interface instead, unauthenticated, after a warning: anyone who reaches the port can run code as
this user.

  python -m experiments.worker --port=8000 --tls_dir=certs
"""

import os
import sys

from absl import flags

from experiments import flagfiles
from experiments import worker_service
from fedpara_tff import local_worker
from fedpara_tff import worker_tls

_PORT = flags.DEFINE_integer('port', None, 'TCP port to serve on (1-65535).')
_CONCURRENCY = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Parallel calls of one computation, e.g. clients trained at once (-1: no limit).')
_TLS_DIR = flags.DEFINE_string(
    'tls_dir', '', 'Folder with ca.pem, worker.pem and worker.key '
    '(scripts/make_worker_certs.sh): serve mutual TLS.')
_INSECURE = flags.DEFINE_bool(
    'insecure', False, 'Serve plain, unauthenticated gRPC on every interface (not with --tls_dir).')
flags.mark_flag_as_required('port')
flags.register_validator('port', lambda v: v is not None and 1 <= v <= 65535,
                         message='--port must be in 1-65535.')
flags.register_validator('max_concurrent_computation_calls', lambda v: v == -1 or v >= 1,
                         message='--max_concurrent_computation_calls must be -1 or >= 1.')


def _serve_insecure(port, concurrency):
  argv = worker_service.command(port, concurrency)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  print(f'worker: warning: serving TFF computations on port {port} of every interface without '
        f'authentication (--insecure): anyone who reaches it can run code as this user.',
        file=sys.stderr, flush=True)
  os.execv(argv[0], argv)


def _serve_tls(port, concurrency, files):
  worker = local_worker.LocalWorker(concurrency, require_isolation=True)
  try:
    target = worker.start()
  except local_worker.WorkerIsolationError as e:
    raise SystemExit(f'worker: error: {e}') from None
  try:
    worker_tls.serve(port, target[len('unix:'):], files, ready=lambda server: print(
        f'worker: serving TFF computations on port {port} (mutual TLS, CA {files.ca})',
        flush=True))
  except OSError as e:
    raise SystemExit(f'worker: error: cannot serve on port {port}: {e}') from None
  finally:
    worker.stop()


def main(argv):
  flagfiles.no_positional(argv, 'worker')
  worker_service.check_security_choice(_TLS_DIR.value, _INSECURE.value, 'worker')
  worker_service.check_port_free(_PORT.value)
  if _INSECURE.value:
    _serve_insecure(_PORT.value, _CONCURRENCY.value)
  try:
    files = worker_tls.TLSFiles.from_dir(_TLS_DIR.value, 'worker')
  except ValueError as e:
    raise SystemExit(f'worker: error: {e}') from None
  try:
    _serve_tls(_PORT.value, _CONCURRENCY.value, files)
  except KeyboardInterrupt:
    pass


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main)


if __name__ == '__main__':
  entry_point()
