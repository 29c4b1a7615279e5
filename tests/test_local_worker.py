"""`fedpara_tff.local_worker`: TFF's local worker reachable from this process only.

The worker runs in its own network namespace, which holds nothing but a loopback; the driver
reaches it through a Unix socket. Where namespaces cannot be made, one warning line names the open
port, and a required isolation is refused in one line.
"""

import os
import socket
import subprocess
import sys

import psutil
import pytest

from fedpara_tff import local_worker

_COMPUTE = ('import tensorflow as tf, tensorflow_federated as tff\n'
            '@tff.tensorflow.computation(tf.int32)\n'
            'def plus_one(x):\n'
            '  return x + 1\n'
            'assert plus_one(1) == 2\n')

needs_namespaces = pytest.mark.skipif(
    local_worker.namespace_command()[0] is None,
    reason=f'no network namespace here: {local_worker.namespace_command()[1]}')


def _worker_processes(parent):
  return [p for p in parent.children(recursive=True)
          if any('data/worker_binary' in part for part in p.cmdline())]


def _listening_ports_in_this_namespace(pids):
  """TCP ports that `pids` listen on, as seen from this process's network namespace."""
  return sorted({c.laddr.port for c in psutil.net_connections(kind='inet')
                 if c.status == psutil.CONN_LISTEN and c.pid in pids})


def _interfaces(pid):
  """Network interfaces of `pid`'s namespace (from /proc/PID/net/dev)."""
  with open(f'/proc/{pid}/net/dev', encoding='ascii') as f:
    return sorted(line.split(':')[0].strip() for line in f.readlines()[2:])


@needs_namespaces
def test_worker_is_in_a_private_namespace_with_only_loopback():
  worker = local_worker.LocalWorker()
  try:
    target = worker.start()
    assert target.startswith('unix:') and worker.isolated
    path = target[len('unix:'):]
    assert os.stat(os.path.dirname(path)).st_mode & 0o077 == 0   # only this user opens it
    bridge = psutil.Process(worker.pid)
    [process] = _worker_processes(bridge)
    assert os.readlink(f'/proc/{process.pid}/ns/net') != os.readlink('/proc/self/ns/net')
    assert _interfaces(process.pid) == ['lo']
    # Nothing the worker (or its bridge) holds listens in this namespace, i.e. on any interface
    # another host can reach.
    pids = {bridge.pid} | {p.pid for p in bridge.children(recursive=True)}
    assert _listening_ports_in_this_namespace(pids) == []
    # The worker's port, seen from here: nobody answers on it.
    port = int(process.cmdline()[-1].split('=')[1])
    with socket.socket() as s:
      assert s.connect_ex(('127.0.0.1', port)) != 0
    # The Unix socket answers.
    with socket.socket(socket.AF_UNIX) as s:
      s.connect(path)
  finally:
    worker.stop()
  assert not psutil.pid_exists(process.pid) or process.status() == psutil.STATUS_ZOMBIE
  assert not os.path.exists(os.path.dirname(path))


@needs_namespaces
def test_a_run_under_install_listens_on_no_interface():
  code = ('import fedpara_tff, psutil\n'
          'fedpara_tff.runtime.install()\n' + _COMPUTE +
          'pids = {p.pid for p in psutil.Process().children(recursive=True)}\n'
          'workers = [p for p in psutil.Process().children(recursive=True)\n'
          '           if "data/worker_binary" in " ".join(p.cmdline())]\n'
          'print(len(workers), sorted(c.laddr.port for c in psutil.net_connections("inet")\n'
          '                           if c.status == psutil.CONN_LISTEN and c.pid in pids))\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split('\n')[-2] == '1 []'
  assert 'Traceback' not in result.stderr and 'warning' not in result.stderr


def _without_unshare():
  """This environment with a PATH where `unshare` cannot be found."""
  return dict(os.environ, PATH=os.path.dirname(sys.executable))


def test_without_namespaces_warns_naming_the_open_port():
  code = ('import fedpara_tff\n'
          'fedpara_tff.runtime.install()\n' + _COMPUTE +
          'import tensorflow_federated as tff\n'
          'print(tff.framework.get_context_stack().current.local_worker.target)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=_without_unshare())
  assert result.returncode == 0, result.stderr[-2000:]
  port = result.stdout.strip().rpartition(':')[2]
  [warning] = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert f'listens on all interfaces at port {port}' in warning
  assert 'unshare command (util-linux) is missing' in warning
  assert local_worker.REQUIRE_ENV in warning


def test_required_isolation_is_refused_in_one_line_before_any_worker_starts():
  code = ('import fedpara_tff\n'
          'try:\n'
          '  fedpara_tff.runtime.install()\n'
          'except fedpara_tff.local_worker.WorkerIsolationError as e:\n'
          '  print("refused:", e)\n')
  env = dict(_without_unshare(), **{local_worker.REQUIRE_ENV: '1'})
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  [line] = result.stdout.splitlines()
  assert line.startswith('refused: the local TFF worker cannot be isolated from the network '
                         '(the unshare command (util-linux) is missing)')


def test_train_refuses_with_require_isolated_worker(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--require_isolated_worker',
       f'--output_dir={tmp_path / "run"}'], capture_output=True, text=True, timeout=300,
      env=_without_unshare())
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      'train: error: the local TFF worker cannot be isolated from the network (the unshare '
      'command (util-linux) is missing) and isolation is required (--require_isolated_worker or '
      f'{local_worker.REQUIRE_ENV}=1); {local_worker._FIX}.']  # pylint: disable=protected-access
  assert not (tmp_path / 'run').exists()
