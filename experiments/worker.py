r"""Starts a TFF worker on this host: TFF 0.87's C++ `worker_binary`, serving on --port.

The driver (`python -m experiments.train --workers=host:port,... --workers_tls_dir=DIR`) sends it
computations; with several workers each gets a sub-round of the clients.

The worker runs in a private network namespace behind a Unix socket, as local runs do, and
--port on --bind forwards to it. With `--tls_dir` that port serves mutual TLS: only a driver
holding a certificate signed by the run's CA gets through (`fedpara_tff.worker_tls`; make the
files with `scripts/make_worker_certs.sh`); --bind defaults to every interface. `--insecure`
forwards TFF's plain gRPC instead, unauthenticated, after a warning: anyone who reaches the port
can run code as this user, so --bind defaults to loopback (127.0.0.1) there, and another address
is served only when named.

In a Kubernetes pod, where no namespace can be made under Pod Security "restricted",
`--isolation=pod` runs TFF's worker on a plain port of the pod's own network namespace, which the
pod's NetworkPolicy closes to everyone (only the TLS port admits the driver); TLS only, and
refused outside a pod.

  python -m experiments.worker --port=8000 --tls_dir=certs
  python -m experiments.worker --port=8000 --insecure          # 127.0.0.1:8000 only
  python -m experiments.worker --port=8000 --tls_dir=/certs --isolation=pod   # in a pod
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
    'insecure', False, 'Serve plain, unauthenticated gRPC (not with --tls_dir), on --bind.')
_ISOLATION = flags.DEFINE_enum(
    'isolation', 'namespace', ['namespace', 'pod'],
    'namespace: the TFF worker in a private network namespace behind a Unix socket (needs '
    'user namespaces); pod: in a Kubernetes pod, on a plain port of the pod\'s own network that '
    'the pod\'s NetworkPolicy closes to everyone (with --tls_dir only).')
_BIND = flags.DEFINE_string(
    'bind', None, 'Address to serve --port on: default every interface with --tls_dir, '
    '127.0.0.1 (loopback only) with --insecure.')
flags.mark_flag_as_required('port')
flags.register_validator('port', lambda v: v is not None and 1 <= v <= 65535,
                         message='--port must be in 1-65535.')
flags.register_validator('max_concurrent_computation_calls', lambda v: v == -1 or v >= 1,
                         message='--max_concurrent_computation_calls must be -1 or >= 1.')


def bind_address(bind, insecure):
  """Where to listen: `bind`, else every interface with TLS (None) and loopback without."""
  if bind:
    return bind
  return '127.0.0.1' if insecure else None


POD_ENV = 'KUBERNETES_SERVICE_HOST'   # set by the kubelet in every pod


def check_pod_isolation(isolation, insecure):
  """`--isolation=pod` only in a Kubernetes pod and only with TLS: its TFF port is plain, and
  only the pod's NetworkPolicy keeps others off it (deploy/kubernetes/workers.yaml)."""
  if isolation != 'pod':
    return
  if insecure:
    raise SystemExit('worker: error: --isolation=pod serves TFF\'s plain port inside the pod; '
                     'it needs --tls_dir in front of it, not --insecure.')
  if not os.environ.get(POD_ENV):
    raise SystemExit(f'worker: error: --isolation=pod leaves TFF\'s worker on a plain port of '
                     f'this network namespace, which only a Kubernetes NetworkPolicy closes; this '
                     f'process is not in a Kubernetes pod ({POD_ENV} is unset): use the default '
                     f'--isolation=namespace.')


def _serve(port, concurrency, files, host, isolation='namespace'):
  """The worker behind `host:port`: mutual TLS with `files`, plain without; isolated in a
  private network namespace, or (`isolation='pod'`) on a plain port of the pod's network."""
  worker = local_worker.LocalWorker(concurrency, require_isolation=True,
                                    pod_network=isolation == 'pod')
  try:
    target = worker.start()
  except local_worker.WorkerIsolationError as e:
    raise SystemExit(f'worker: error: {e}') from None
  if isolation == 'pod':
    print(f'worker: TFF\'s worker listens on {target} in this pod (--isolation=pod): only '
          f'the pod\'s NetworkPolicy keeps other pods off that plain port.', file=sys.stderr,
          flush=True)
  where = f'{host}:{port}' if host else f'port {port} of every interface'
  if files is None:
    print(f'worker: warning: serving TFF computations on {where} without authentication '
          f'(--insecure): anyone who reaches it can run code as this user.', file=sys.stderr,
          flush=True)
  how = f'mutual TLS, CA {files.ca}' if files is not None else 'plain gRPC'
  try:
    worker_tls.serve(port, target, files, host=host, ready=lambda server: print(
        f'worker: serving TFF computations on {where} ({how})', flush=True))
  except OSError as e:
    raise SystemExit(f'worker: error: cannot serve on {where}: {e}') from None
  finally:
    worker.stop()


def main(argv):
  try:
    _main(argv)
  except KeyboardInterrupt:   # stopped while starting (launch_workers' Ctrl-C): no traceback
    raise SystemExit(130) from None


def _main(argv):
  flagfiles.no_positional(argv, 'worker')
  worker_service.check_security_choice(_TLS_DIR.value, _INSECURE.value, 'worker')
  check_pod_isolation(_ISOLATION.value, _INSECURE.value)
  worker_service.check_port_free(_PORT.value)
  files = None
  if not _INSECURE.value:
    try:
      files = worker_tls.TLSFiles.from_dir(_TLS_DIR.value, 'worker')
    except ValueError as e:
      raise SystemExit(f'worker: error: {e}') from None
  try:
    _serve(_PORT.value, _CONCURRENCY.value, files, bind_address(_BIND.value, _INSECURE.value),
           _ISOLATION.value)
  except KeyboardInterrupt:
    pass


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main)


if __name__ == '__main__':
  entry_point()
