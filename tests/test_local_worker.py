"""`fedpara_tff.local_worker`: TFF's local worker reachable from this process only.

The worker runs in its own network namespace, which holds nothing but a loopback; the driver
reaches it through a Unix socket. Where namespaces cannot be made, the worker is refused in one
line (it fails closed); only `--allow_open_local_worker` / `FEDPARA_ALLOW_OPEN_LOCAL_WORKER=1` runs
it on an open port, after a warning naming the port and the exposure.
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


def _without_unshare(**env):
  """This environment with a PATH where `unshare` cannot be found, without the suite's own
  opt-in to an open worker (tests/conftest.py), plus `env`."""
  clean = {k: v for k, v in os.environ.items() if k != local_worker.ALLOW_OPEN_ENV}
  return dict(clean, PATH=os.path.dirname(sys.executable), **env)


def test_without_namespaces_an_allowed_open_worker_warns_naming_the_port_and_exposure():
  code = ('import fedpara_tff\n'
          'fedpara_tff.runtime.install()\n' + _COMPUTE +
          'import tensorflow_federated as tff\n'
          'print(tff.framework.get_context_stack().current.local_worker.target)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=_without_unshare(**{local_worker.ALLOW_OPEN_ENV: '1'}))
  assert result.returncode == 0, result.stderr[-2000:]
  port = result.stdout.strip().rpartition(':')[2]
  [warning] = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert f'listens on every interface at port {port}, unauthenticated' in warning
  assert f'whoever reaches this host on port {port} can run code as this user' in warning
  assert 'unshare command (util-linux) is missing' in warning


def test_without_namespaces_the_worker_is_refused_by_default_in_one_line():
  """Issue 37: it warned and then listened on every interface, unauthenticated."""
  # One process, two tries (install reads the variables at each call): by default, then with
  # isolation required and an open worker allowed.
  code = ('import os, fedpara_tff\n'
          'for env in ({}, {%r: "1", %r: "1"}):\n'
          '  os.environ.update(env)\n'
          '  try:\n'
          '    fedpara_tff.runtime.install()\n'
          '  except fedpara_tff.local_worker.WorkerIsolationError as e:\n'
          '    print("refused:", e)\n' % (local_worker.REQUIRE_ENV, local_worker.ALLOW_OPEN_ENV))
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=_without_unshare())
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 2, lines
  for line, required in zip(lines, (False, True)):
    assert line.startswith('refused: the local TFF worker cannot run in a private network '
                           'namespace here (') and 'unshare command (util-linux) is missing' in line
    # Required isolation (the worker binary's, or the variable's) offers no open port.
    assert line.endswith(f'--allow_open_local_worker ({local_worker.ALLOW_OPEN_ENV}=1).') == (
        not required)


# A Docker-like process, made without Docker: a user namespace whose own user namespaces are off
# (user.max_user_namespaces=0) and whose processes lack CAP_SYS_ADMIN (setpriv's bounding set).
_LOCKED_DOWN = ['unshare', '--user', '--map-root-user', 'sh', '-c',
                'echo 0 > /proc/sys/user/max_user_namespaces && '
                'exec setpriv --bounding-set -sys_admin "$@"', 'sh']


def _can_lock_down():
  try:
    done = subprocess.run(_LOCKED_DOWN + ['true'], capture_output=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return done.returncode == 0


@pytest.mark.skipif(not _can_lock_down(), reason='cannot make a user namespace here')
def test_a_run_in_a_locked_down_container_refuses_naming_what_it_found(tmp_path):
  """Issue 37: `experiments.train` where user namespaces are off and uid 0 lacks CAP_SYS_ADMIN
  (Docker's default) printed a warning and served TFF's worker on every interface."""
  clean = {k: v for k, v in os.environ.items() if k != local_worker.ALLOW_OPEN_ENV}
  result = subprocess.run(
      _LOCKED_DOWN + [sys.executable, '-m', 'experiments.train', '--rounds=1',
                      f'--output_dir={tmp_path / "run"}', f'--cache_dir={tmp_path / "cache"}'],
      capture_output=True, text=True, timeout=300, env=clean, cwd=os.path.dirname(
          os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 1, result.stderr[-2000:]
  [line] = result.stderr.strip().splitlines()
  assert line.startswith('train: error: the local TFF worker cannot run in a private network '
                         'namespace here (user namespaces are off (user.max_user_namespaces=0); '
                         'uid 0 without CAP_SYS_ADMIN; unshare failed: ')
  assert 'without one it would listen on every interface, unauthenticated: refused' in line
  assert not (tmp_path / 'run').exists()
  assert not [p for p in psutil.process_iter(['cmdline'])
              if any('data/worker_binary' in part for part in p.info['cmdline'] or [])
              and str(tmp_path) in ' '.join(p.info['cmdline'] or [])]


def test_train_refuses_without_namespaces_and_allow_and_require_conflict(tmp_path):
  for extra, expected in (
      ([], 'train: error: the local TFF worker cannot run in a private network namespace here '
           '(the unshare command (util-linux) is missing), and without one it would listen on '
           'every interface, unauthenticated: refused.'),
      (['--require_isolated_worker', '--allow_open_local_worker'],
       'train: error: give require_isolation (--require_isolated_worker) or allow_open '
       '(--allow_open_local_worker), not both.')):
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.train', *extra, f'--output_dir={tmp_path / "run"}'],
        capture_output=True, text=True, timeout=300, env=_without_unshare())
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert not (tmp_path / 'run').exists()


# Runs a command and watches its process tree until it exits: prints its exit code, how many
# TFF workers it ever had and every socket any of its processes listened on.
_WATCH = '''
import subprocess, sys, time, psutil
child = subprocess.Popen(sys.argv[1:])
workers, listening = set(), set()
while child.poll() is None:
  try:
    family = [psutil.Process(child.pid)] + psutil.Process(child.pid).children(recursive=True)
  except psutil.Error:
    family = []
  for process in family:
    try:
      if any("data/worker_binary" in part for part in process.cmdline()):
        workers.add(process.pid)
      listening.update(f"{c.laddr.ip}:{c.laddr.port}" for c in process.net_connections("inet")
                       if c.status == psutil.CONN_LISTEN)
    except psutil.Error:
      pass
  time.sleep(0.05)
print(child.returncode, len(workers), sorted(listening))
'''


@pytest.mark.slow   # a binary in a subprocess, end to end (pytest.ini)
@pytest.mark.skipif(not _can_lock_down(), reason='cannot make a user namespace here')
def test_a_tf_backend_run_in_a_locked_down_container_starts_no_worker_and_listens_nowhere(
    tmp_path):
  """Issue 37: `--backend=tf` still started a TFF worker (its aggregation, server step and
  metrics were TFF computations), so where isolation is impossible it was refused too."""
  clean = {k: v for k, v in os.environ.items() if k != local_worker.ALLOW_OPEN_ENV}
  result = subprocess.run(
      _LOCKED_DOWN + [sys.executable, '-c', _WATCH, sys.executable, '-m', 'experiments.train',
                      '--backend=tf', '--model=mlp', '--clients=6', '--clients_per_round=2',
                      '--rounds=1', '--noprogress', f'--output_dir={tmp_path / "run"}',
                      f'--cache_dir={tmp_path / "cache"}'],
      capture_output=True, text=True, timeout=300, env=clean, cwd=os.path.dirname(
          os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '0 0 []', result.stderr[-2000:]
  assert (tmp_path / 'run' / 'metrics.csv').exists()
  assert 'error' not in result.stderr and 'warning: open local worker' not in result.stderr
