r"""Starts a TFF worker on this host: TFF 0.87's C++ `worker_binary`, serving gRPC on --port.

The driver (`python -m experiments.train --workers=host:port,...`) sends it
computations; with several workers each gets a sub-round of the clients. This
process becomes the worker (exec), so signals reach it directly.

  python -m experiments.worker --port=8000 --max_concurrent_computation_calls=-1
"""

import os

from absl import app
from absl import flags

from experiments import flagfiles
from experiments import worker_service

_PORT = flags.DEFINE_integer('port', None, 'TCP port to serve on (1-65535).')
_CONCURRENCY = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Parallel calls of one computation, e.g. clients trained at once (-1: no limit).')
flags.mark_flag_as_required('port')
flags.register_validator('port', lambda v: v is not None and 1 <= v <= 65535,
                         message='--port must be in 1-65535.')
flags.register_validator('max_concurrent_computation_calls', lambda v: v == -1 or v >= 1,
                         message='--max_concurrent_computation_calls must be -1 or >= 1.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
  worker_service.check_port_free(_PORT.value)
  argv = worker_service.command(_PORT.value, _CONCURRENCY.value)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  print(f'worker: serving TFF computations on port {_PORT.value}', flush=True)
  os.execv(argv[0], argv)


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main)


if __name__ == '__main__':
  entry_point()
