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
from tests import run_support as rs
from tests import test_client_executors as executors_test

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
