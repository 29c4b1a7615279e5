"""`fedpara_tff.runtime`: nothing installed at import; `install()` / `managed()` leave no TFF
worker behind."""

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

# A tiny TFF computation: it starts the local C++ runtime's worker_binary.
_COMPUTE = ('import tensorflow as tf, tensorflow_federated as tff\n'
            '@tff.tensorflow.computation(tf.int32)\n'
            'def plus_one(x):\n'
            '  return x + 1\n'
            'assert plus_one(1) == 2\n')


def _workers_started_by(tag):
  """TFF workers whose environment carries `tag` (inherited from the process `_run` started):
  only that process's, whatever else runs on the machine (other test processes included)."""
  found = []
  for p in psutil.process_iter(['cmdline']):
    try:
      if ('data/worker_binary' in ' '.join(p.info['cmdline'] or [])
          and p.environ().get('FEDPARA_TEST_TAG') == tag):
        found.append(p.pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
      pass
  return found


def _run(code):
  tag = uuid.uuid4().hex
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, FEDPARA_TEST_TAG=tag))
  assert result.returncode == 0, result.stderr[-2000:]
  deadline = time.time() + 10
  while _workers_started_by(tag) and time.time() < deadline:
    time.sleep(0.2)
  return result, _workers_started_by(tag)


def test_import_installs_nothing():
  result, _ = _run('import fedpara_tff\n'
                   'print(fedpara_tff.runtime.installed(), len(fedpara_tff.runtime._WATCHDOG))')
  assert result.stdout.split() == ['False', '0']


def test_installed_process_leaves_no_worker_at_exit():
  result, left = _run('import fedpara_tff\n'
                      'print(fedpara_tff.runtime.install() > 0)\n' + _COMPUTE)
  assert result.stdout.strip() == 'True'
  assert not left, f'worker(s) left: {left}'
  assert 'Traceback' not in result.stderr


def test_managed_stops_the_workers_on_leaving():
  code = ('import fedpara_tff, psutil\n'
          'with fedpara_tff.runtime.managed():\n' +
          ''.join('  ' + line + '\n' for line in _COMPUTE.splitlines()) +
          'me = psutil.Process()\n'
          'print(sum("data/worker_binary" in " ".join(c.cmdline()) for c in me.children(True)))\n')
  result, left = _run(code)
  assert result.stdout.strip() == '0'
  assert not left


@pytest.mark.slow
def test_a_driver_installs_the_runtime_unless_a_context_was_chosen():
  """Found after issue 25: a script that built a driver (or `build_fedpara_process`) without
  `install()` ran on TFF's own context, whose worker listens on every interface and outlived the
  script."""
  driver = ('from tests import tff_support as ts\n'
            'd = fedpara_tff.build_fedavg_driver(ts.keras_model, ts.ELEMENT_SPEC)\n'
            'data = [ts.to_dataset(*ts.client_arrays([20])[0])]\n'
            'state, _ = d.next(d.initialize(), ["a"], data)\n'
            'print(fedpara_tff.runtime.installed())\n')
  result, left = _run('import fedpara_tff\n' + driver)
  assert result.stdout.split()[-1] == 'True'
  assert not left, f'worker(s) left: {left}'
  # The same for build_fedpara_process, TFF's own FedAvg builder.
  result, left = _run('import fedpara_tff\nfrom tests import tff_support as ts\n'
                      'p = fedpara_tff.build_fedpara_process(ts.model_fn)\n'
                      'p.next(p.initialize(), [ts.to_dataset(*ts.client_arrays([20])[0])])\n'
                      'print(fedpara_tff.runtime.installed())\n')
  assert result.stdout.split()[-1] == 'True'
  assert not left, f'worker(s) left: {left}'
  # A context the user set is kept: only TFF's native local context is replaced (checked on
  # contexts that are created, not run: TFF's test context would leave its own worker behind).
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from fedpara_tff import runtime  # pylint: disable=g-import-not-at-top
  native, test = (tff.backends.native.create_sync_local_cpp_execution_context(),
                  tff.backends.test.create_sync_test_cpp_execution_context())
  assert runtime._is_tff_native_local(native) and not runtime._is_tff_native_local(test)
  assert not runtime._is_tff_native_local(tff.framework.get_context_stack().current)  # installed


def test_exit_now_prints_no_finalizer_errors_of_a_dead_worker():
  """Found by CI's SIGTERM-to-the-group test: a finalizer disposing of a value on the dead worker,
  run while the workers are shut down, printed "Exception ignored ... RetryableGRPCError" after
  the run's one line (timing-dependent there; forced here)."""
  code = ('from fedpara_tff import runtime\n'
          'class Value:\n'
          '  def __del__(self):\n'
          '    raise RuntimeError("dispose on a dead worker")\n'
          'held = [Value()]\n'
          'runtime.shutdown_workers = lambda final=False: held.clear()\n'
          'runtime.exit_now(143)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 143
  assert result.stderr == ''
