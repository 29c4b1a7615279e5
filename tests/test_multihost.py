"""Remote workers on other hosts: network namespaces joined to this one by veth pairs.

Each "host" is a network namespace this test makes, with its own veth link and an address the
test assigns from a private /24 that no interface here uses. One TLS worker runs in each, started
through the project's own entry point (`python -m experiments.worker --tls_dir`), and the driver
trains from this namespace with `--workers` naming those addresses. Traffic goes only to them.
Needs root and `ip netns` (CI runs as root); skipped otherwise, with the reason.
"""

import contextlib
import ipaddress
import json
import os
import random
import select
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import checkpoints
from experiments import run_config
from experiments import runner
from fedpara_tff import distributed
from fedpara_tff import local_worker
from tests import run_support as rs

PORT = 8000
TINY = dict(dataset='mnist5k', model='mlp', clients=8, clients_per_round=4, rounds=2,
            batch_size=64, progress=False)


def _why_not():
  if os.geteuid() != 0:
    return 'needs root (network namespaces and veth links)'
  if shutil.which('ip') is None:
    return 'needs the ip command (iproute2)'
  if local_worker.namespace_command()[0] is None:
    return f'no nested network namespace here: {local_worker.namespace_command()[1]}'
  probe = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, timeout=10)
  return None if probe.returncode == 0 else f'ip netns does not work: {probe.stderr.strip()}'


pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


def _ip(*args):
  subprocess.run(['ip', *args], check=True, capture_output=True, timeout=20)


def _free_subnet():
  """A 10.x.y.0/24 that no route here covers."""
  routes = subprocess.run(['ip', '-4', 'route', 'show', 'table', 'all'], capture_output=True,
                          text=True, timeout=10).stdout
  used = [ipaddress.ip_network(word, strict=False) for word in routes.split()
          if '/' in word and word[0].isdigit()]
  rng = random.Random(os.getpid())
  for _ in range(100):
    net = ipaddress.ip_network(f'10.{rng.randrange(200, 255)}.{rng.randrange(256)}.0/24')
    if not any(net.overlaps(u) for u in used):
      return net
  raise RuntimeError('no free 10.x.y.0/24 here')


@contextlib.contextmanager
def hosts(count):
  """`count` network namespaces, each joined to this one by a veth /30; yields their addresses.
  Everything made is removed on leaving, however the test ends."""
  subnet = _free_subnet()
  tag = f'fp{os.getpid() % 100000}'
  made, addresses = [], []
  try:
    for i in range(count):
      ns, outer, inner = f'{tag}h{i}', f'{tag}o{i}', f'{tag}i{i}'
      here, there = subnet[4 * i + 1], subnet[4 * i + 2]
      _ip('netns', 'add', ns)
      made.append(ns)
      _ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner)
      _ip('link', 'set', inner, 'netns', ns)
      _ip('addr', 'add', f'{here}/30', 'dev', outer)
      _ip('link', 'set', outer, 'up')
      _ip('-n', ns, 'addr', 'add', f'{there}/30', 'dev', inner)
      _ip('-n', ns, 'link', 'set', inner, 'up')
      _ip('-n', ns, 'link', 'set', 'lo', 'up')
      addresses.append((ns, str(there)))
    yield addresses
  finally:
    for ns in made:   # deleting a namespace deletes its veth end, and with it the pair
      subprocess.run(['ip', 'netns', 'del', ns], capture_output=True, timeout=20)


@contextlib.contextmanager
def tls_workers(namespaces, certs):
  processes = []
  try:
    for ns, _ in namespaces:
      processes.append(subprocess.Popen(
          ['ip', 'netns', 'exec', ns, sys.executable, '-m', 'experiments.worker',
           f'--port={PORT}', f'--tls_dir={certs}'], cwd=rs.REPO, stdout=subprocess.PIPE, text=True))
    for process in processes:
      line = first_line(process, 120)
      assert 'mutual TLS' in line, line
    yield processes
  finally:
    for process in processes:
      process.terminate()
    for process in processes:
      try:
        process.wait(30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def first_line(process, timeout):
  """The first line `process` prints, or '' after `timeout` seconds (a bounded wait)."""
  ready, _, _ = select.select([process.stdout], [], [], timeout)
  return process.stdout.readline() if ready else ''


def _final(run_dir, round_num):
  with np.load(checkpoints.path_for(os.path.join(run_dir, 'checkpoints'), round_num)) as stored:
    return {k: stored[k] for k in stored.files if k != 'meta'}


def test_two_hosts_over_mutual_tls_give_the_local_results(tmp_path):
  with hosts(2) as namespaces:
    certs = tmp_path / 'certs'
    rs.make_worker_certs(certs, *(address for _, address in namespaces))
    workers = [f'{address}:{PORT}' for _, address in namespaces]
    common = dict(TINY, cache_dir=str(tmp_path / 'cache'), parameterization='fedpara')
    with tls_workers(namespaces, certs):
      # The driver: the training binary, as a user runs it.
      flags = [f'--{key}={value}' for key, value in common.items()]
      result = subprocess.run(
          [sys.executable, '-m', 'experiments.train', *flags, f'--output_dir={tmp_path / "remote"}',
           f'--workers={",".join(workers)}', f'--workers_tls_dir={certs}',
           '--worker_connect_timeout=60'], cwd=rs.REPO, capture_output=True, text=True, timeout=400)
      assert result.returncode == 0, result.stderr[-3000:]
      for address in workers:
        assert f'worker {address}: ' in result.stdout   # both hosts got computations and clients
      # A client without a certificate of the run's CA gets nothing from either host.
      for address in workers:
        with pytest.raises(distributed.WorkerUnavailableError):
          distributed.wait_until_reachable([address], 3.0)
    local = runner.run(run_config.RunConfig(output_dir=str(tmp_path / 'local'), **common))
  with open(tmp_path / 'remote' / 'summary.json', encoding='utf-8') as f:
    shares = json.load(f)['worker_shares']
  assert [s['address'] for s in shares] == workers
  assert all(s['clients'] > 0 for s in shares)
  a, b = _final(local['output_dir'], 2), _final(str(tmp_path / 'remote'), 2)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5, err_msg=key)
  leftover = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
  assert not any(ns in leftover for ns, _ in namespaces)
