"""Remote workers behind mutual TLS: the driver with the run's certificate gets the local results;
a client without it is refused; the worker's own port is open to no one."""

import os
import select
import subprocess
import sys
import time

import grpc
import portpicker
import psutil
import pytest

from fedpara_tff import distributed
from fedpara_tff import local_worker
from fedpara_tff import worker_tls
from experiments import runner
from tests import run_support as rs
from tests import test_client_executors as executors_test
from tests import test_local_worker as local_worker_test

pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(
    local_worker.namespace_command()[0] is None,
    reason=f'no network namespace here: {local_worker.namespace_command()[1]}')]



def _certs(folder):
  return rs.make_worker_certs(folder, '127.0.0.1')


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
  return _certs(tmp_path_factory.mktemp('certs'))


@pytest.fixture(scope='module')
def tls_worker(certs):
  port = portpicker.pick_unused_port()
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.worker', f'--port={port}', f'--tls_dir={certs}'],
      stdout=subprocess.PIPE, text=True, cwd=rs.REPO)
  ready, _, _ = select.select([process.stdout], [], [], 120)   # a bounded wait
  line = process.stdout.readline() if ready else ''
  assert 'mutual TLS' in line, line
  yield f'127.0.0.1:{port}', process
  process.terminate()
  process.wait(30)


def _driver_credentials(folder):
  return worker_tls.channel_credentials(worker_tls.TLSFiles.from_dir(str(folder), 'driver'))


def test_the_driver_with_the_runs_certificate_gets_the_local_results(tls_worker, certs):
  address, _ = tls_worker
  workers = distributed.RemoteWorkers([address], 30, 10, _driver_credentials(certs))
  datasets = executors_test.make_datasets()
  executors_test.assert_same(executors_test.two_rounds(None, datasets),
                             executors_test.two_rounds(workers, datasets))
  assert workers.shares[0].calls > 0 and workers.shares[0].clients > 0


def _refused(address, credentials):
  start = time.monotonic()
  with pytest.raises(distributed.WorkerUnavailableError):
    distributed.wait_until_reachable([address], 3.0, credentials)
  assert time.monotonic() - start < 10


def test_clients_without_a_certificate_of_the_runs_ca_are_refused(tls_worker, certs, tmp_path):
  address = tls_worker[0]
  with open(os.path.join(certs, 'ca.pem'), 'rb') as ca:
    server_only = grpc.ssl_channel_credentials(root_certificates=ca.read())
  other = _certs(tmp_path / 'other')   # another CA's driver certificate
  with open(os.path.join(certs, 'ca.pem'), 'rb') as ca, \
      open(os.path.join(other, 'driver.pem'), 'rb') as cert, \
      open(os.path.join(other, 'driver.key'), 'rb') as key:
    foreign = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
  _refused(address, None)            # plain gRPC
  _refused(address, server_only)     # TLS, no client certificate
  _refused(address, foreign)         # TLS, a certificate another CA signed
  distributed.wait_until_reachable([address], 30, _driver_credentials(certs))


def test_only_the_tls_port_listens_where_others_can_reach(tls_worker):
  address, process = tls_worker
  tree = psutil.Process(process.pid)
  pids = {tree.pid} | {p.pid for p in tree.children(recursive=True)}
  ports = sorted({c.laddr.port for c in psutil.net_connections(kind='inet')
                  if c.status == psutil.CONN_LISTEN and c.pid in pids})
  assert ports == [int(address.rpartition(':')[2])]
  assert any('data/worker_binary' in ' '.join(p.cmdline()) for p in tree.children(recursive=True))


@pytest.mark.parametrize('binary', ['worker', pytest.param('launch_workers',
                                                            marks=pytest.mark.slow)])
def test_workers_need_tls_or_an_explicit_insecure(binary):
  port_flag = '--port=8123' if binary == 'worker' else '--base_port=8123'
  for extra in ([], ['--tls_dir=certs', '--insecure']):
    result = subprocess.run([sys.executable, '-m', f'experiments.{binary}', port_flag, *extra],
                            capture_output=True, text=True, timeout=120, cwd=rs.REPO)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'{binary}: error: give --tls_dir (mutual TLS; scripts/make_worker_certs.sh makes the '
        f'files) or --insecure (plain gRPC: whoever reaches the port runs code), exactly one.']


def _listeners(root):
  """`(address, port)` of every TCP socket `root` and its children listen on, in this network
  namespace (a worker in its own namespace is invisible here, as it is to other hosts)."""
  pids = {root.pid} | {child.pid for child in root.children(recursive=True)}
  return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind='inet')
                 if c.status == psutil.CONN_LISTEN and c.pid in pids})


def test_insecure_workers_listen_on_loopback_only_and_say_what_listens():
  """Issue 37: `launch_workers --insecure` printed `--workers=127.0.0.1:<port>` while the worker
  listened on every interface, without a warning; `experiments.worker` bound 0.0.0.0 and [::]."""
  port = portpicker.pick_unused_port()
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.launch_workers', '--count=1', f'--base_port={port}',
       '--insecure'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=rs.REPO)
  try:
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline().strip() if ready else ''
    assert line == f'--workers=127.0.0.1:{port}'
    # Printed only once it listens: the address it names accepts at once.
    import socket  # pylint: disable=g-import-not-at-top
    socket.create_connection(('127.0.0.1', port), timeout=5).close()
    assert _listeners(psutil.Process(process.pid)) == [('127.0.0.1', port)]
    workers = distributed.RemoteWorkers([line.split('=')[1]], 30, 10)
    datasets = executors_test.make_datasets()
    executors_test.assert_same(executors_test.two_rounds(None, datasets),
                               executors_test.two_rounds(workers, datasets))
  finally:
    process.send_signal(subprocess.signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
  assert [l for l in stderr.splitlines() if 'warning' in l] == [
      'launch_workers: warning: --insecure: the workers serve TFF computations on 127.0.0.1 '
      'without authentication: anyone who reaches that address can run code as this user.',
      f'worker: warning: serving TFF computations on 127.0.0.1:{port} without authentication '
      f'(--insecure): anyone who reaches it can run code as this user.']
  assert 'Traceback' not in stderr


def test_a_worker_serves_tls_on_the_address_it_is_bound_to(certs):
  port = portpicker.pick_unused_port()
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.worker', f'--port={port}', f'--tls_dir={certs}',
       '--bind=127.0.0.1'], stdout=subprocess.PIPE, text=True, cwd=rs.REPO)
  try:
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else ''
    assert line.startswith(f'worker: serving TFF computations on 127.0.0.1:{port} (mutual TLS')
    assert _listeners(psutil.Process(process.pid)) == [('127.0.0.1', port)]
  finally:
    process.terminate()
    process.wait(30)


@pytest.mark.parametrize('delay', [0.3, 1.0])
@pytest.mark.parametrize('tls', [True, False])
def test_ctrl_c_while_workers_start_prints_no_tracebacks(certs, delay, tls):
  """Issue 38: SIGINT during `launch_workers --tls_dir` start-up printed ~90 lines of the
  children's tracebacks. Ctrl-C reaches the whole foreground process group, as here."""
  port = portpicker.pick_unused_port()
  security = f'--tls_dir={certs}' if tls else '--insecure'
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.launch_workers', '--count=2', f'--base_port={port}',
       security], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=rs.REPO,
      start_new_session=True)
  # Once its workers are starting: each a running `experiments.worker` (a Ctrl-C while a Python
  # itself starts up is that Python's own fatal-error traceback, which nothing here can stop).
  deadline = time.monotonic() + 60
  started = []
  while time.monotonic() < deadline and len(started) < 2:
    started = [child for child in psutil.Process(process.pid).children()
               if 'experiments.worker' in ' '.join(child.cmdline())]
    time.sleep(0.01)
  time.sleep(delay)
  os.killpg(process.pid, subprocess.signal.SIGINT)
  try:
    _, stderr = process.communicate(timeout=60)
  finally:
    if process.poll() is None:   # its watchdog then stops the workers it started
      process.kill()
      process.wait()
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert len(stderr.splitlines()) <= 4, stderr
  _, alive = psutil.wait_procs(started, timeout=15)
  assert not alive


@pytest.fixture(scope='module')
def other_ca(tmp_path_factory):
  return _certs(tmp_path_factory.mktemp('other_certs'))


def test_a_tls_failure_is_named_not_called_unreachable(tls_worker, certs, other_ca, tmp_path):
  """Issue 38: a driver with the wrong CA, or TLS against a plain worker, printed gRPC handshake
  noise and then "unreachable ... start one with ...", while the cause is the certificate."""
  address, _ = tls_worker
  driver = lambda folder: worker_tls.TLSFiles.from_dir(str(folder), 'driver')  # noqa: E731
  assert worker_tls.handshake_problem(address, driver(certs)) is None
  problem = worker_tls.handshake_problem(address, driver(other_ca))
  assert problem.startswith('its certificate is not accepted: self-signed certificate in '
                            'certificate chain (checked against CA ')   # another CA's chain
  assert worker_tls.handshake_problem(f'127.0.0.1:{portpicker.pick_unused_port()}',
                                      driver(certs)) is None   # nothing there: unreachable
  config = rs.config(tmp_path, workers=address, workers_tls_dir=str(other_ca),
                     worker_connect_timeout=2.0)
  with pytest.raises(distributed.WorkerUnavailableError,
                     match=rf'^TFF worker {address} answers but mutual TLS failed: its '
                           r'certificate is not accepted: self-signed certificate in'):
    runner.run(config)


def test_tls_against_a_plain_worker_is_named():
  """Issue 38: TLS against a plain worker was reported as unreachable."""
  port = portpicker.pick_unused_port()
  process = subprocess.Popen([sys.executable, '-m', 'experiments.worker', f'--port={port}',
                              '--insecure'], stdout=subprocess.PIPE, text=True, cwd=rs.REPO,
                             stderr=subprocess.DEVNULL)
  try:
    ready, _, _ = select.select([process.stdout], [], [], 120)
    assert ready and 'plain gRPC' in process.stdout.readline()
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as folder:
      files = worker_tls.TLSFiles.from_dir(_certs(folder), 'driver')
      assert worker_tls.handshake_problem(f'127.0.0.1:{port}', files) == (
          'it does not speak TLS (a plain worker, started with --insecure?)')
  finally:
    process.terminate()
    process.wait(30)


def test_unusable_key_files_are_named_and_a_readable_key_warns(certs, tmp_path, capfd):
  """Issue 38: a garbage or mismatched key named no file; a key readable by others was served
  without a warning."""
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'tls'
  shutil.copytree(certs, folder)
  key = folder / 'worker.key'
  key.chmod(0o644)
  worker_tls.TLSFiles.from_dir(str(folder), 'worker')
  assert capfd.readouterr().err == (
      f'fedpara_tff: warning: private key {key} is readable by other users (mode 644): whoever '
      f'reads it can pose as this side; chmod 600 {key}.\n')
  # A Kubernetes Secret for the pod's fsGroup: readable by this process's own group only.
  key.chmod(0o440)
  worker_tls.TLSFiles.from_dir(str(folder), 'worker')
  assert capfd.readouterr().err == ''
  if os.geteuid() == 0:   # the key given to a group this process is not in
    other = max({os.getegid(), *os.getgroups()}) + 1
    os.chown(key, -1, other)
    worker_tls.TLSFiles.from_dir(str(folder), 'worker')
    assert 'is readable by other users (mode 440)' in capfd.readouterr().err
  key.chmod(0o600)
  key.write_text('garbage')
  with pytest.raises(ValueError, match=rf'^TLS files {folder}/worker.pem and {key} do not load '
                                       r'as a certificate and its own private key \('):
    worker_tls.TLSFiles.from_dir(str(folder), 'worker')
  shutil.copy(folder / 'driver.key', key)   # another pair's key
  with pytest.raises(ValueError, match=r'do not load as a certificate and its own private key'):
    worker_tls.TLSFiles.from_dir(str(folder), 'worker')
  (folder / 'ca.pem').write_text('not a certificate')
  with pytest.raises(ValueError, match=rf'^TLS CA file {folder}/ca.pem does not load'):
    worker_tls.TLSFiles.from_dir(str(folder), 'worker')


@pytest.mark.slow   # a binary in a subprocess, end to end (pytest.ini)
@pytest.mark.skipif(not local_worker_test._can_lock_down(), reason='cannot make a user namespace')
def test_a_tls_driver_in_a_locked_down_container_starts_no_worker_and_listens_nowhere(
    tls_worker, certs, tmp_path):
  """Issue 37: the driver of remote TLS workers installed (and so required) a local TFF worker
  of its own: where it cannot be isolated the run was refused, and allowed open it would have
  been a plain port in the pod that holds driver.key."""
  address, _ = tls_worker
  clean = {k: v for k, v in os.environ.items() if k != local_worker.ALLOW_OPEN_ENV}
  result = subprocess.run(
      local_worker_test._LOCKED_DOWN + [
          sys.executable, '-c', local_worker_test._WATCH, sys.executable, '-m',
          'experiments.train', f'--workers={address}', f'--workers_tls_dir={certs}',
          '--model=mlp', '--clients=4', '--clients_per_round=2', '--rounds=1', '--noprogress',
          f'--output_dir={tmp_path / "run"}', f'--cache_dir={tmp_path / "cache"}'],
      capture_output=True, text=True, timeout=300, env=clean, cwd=rs.REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '0 0 []', result.stderr[-2000:]
  assert f'worker {address}: ' in result.stdout


@pytest.mark.slow   # a binary in a subprocess, end to end (pytest.ini)
@pytest.mark.skipif(not local_worker_test._can_lock_down(), reason='cannot make a user namespace')
def test_a_pod_isolated_worker_serves_tls_where_no_namespace_can_be_made(certs):
  """Issue 37: under Pod Security "restricted" a worker cannot unshare; `--isolation=pod` runs
  TFF's worker on the pod's own network behind the TLS port (here: a Docker-like process that
  says it is in a pod)."""
  port = portpicker.pick_unused_port()
  env = dict(os.environ, KUBERNETES_SERVICE_HOST='10.0.0.1')
  process = subprocess.Popen(
      local_worker_test._LOCKED_DOWN + [sys.executable, '-m', 'experiments.worker',
                                        f'--port={port}', f'--tls_dir={certs}',
                                        '--isolation=pod'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=rs.REPO, env=env)
  try:
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else ''
    assert 'mutual TLS' in line, (line, process.stderr.read() if process.poll() else '')
    workers = distributed.RemoteWorkers([f'127.0.0.1:{port}'], 30, 10,
                                        _driver_credentials(certs))
    datasets = executors_test.make_datasets()
    executors_test.assert_same(executors_test.two_rounds(None, datasets),
                               executors_test.two_rounds(workers, datasets))
  finally:
    process.terminate()
    _, err = process.communicate(timeout=30)
  assert '(--isolation=pod): only the pod\'s NetworkPolicy keeps other pods off' in err


@pytest.mark.parametrize('extra, expected', [
    ([], 'this process is not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset): use the '
         'default --isolation=namespace.'),
    (['--insecure'], 'it needs --tls_dir in front of it, not --insecure.')])
def test_pod_isolation_is_refused_outside_a_pod_and_without_tls(certs, extra, expected):
  env = {k: v for k, v in os.environ.items() if k != 'KUBERNETES_SERVICE_HOST'}
  tls = [] if extra else [f'--tls_dir={certs}']
  result = subprocess.run([sys.executable, '-m', 'experiments.worker', '--port=1',
                           '--isolation=pod', *tls, *extra], capture_output=True, text=True,
                          timeout=120, cwd=rs.REPO, env=env)
  assert result.returncode == 1
  [line] = result.stderr.strip().splitlines()
  assert line.startswith('worker: error: --isolation=pod') and line.endswith(expected), line
