"""The worker watchdog stops a dead parent's `worker_binary` processes and nothing else."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from fedpara_tff import worker_watchdog

WATCHDOG = worker_watchdog.__file__
# A stand-in parent: starts a fake worker (its command line names data/worker_binary, as TFF's
# does) and a bystander child, prints both pids, then waits to be killed.
PARENT = '''
import subprocess, sys, time
sleeper = [sys.executable, '-c', 'import time; time.sleep(120)']
worker = subprocess.Popen(sleeper + ['/x/executor_stacks/../data/worker_binary'])
bystander = subprocess.Popen(sleeper + ['/x/data/not_a_worker'])
print(worker.pid, bystander.pid, flush=True)
time.sleep(120)
'''


def _start(parent_pid):
  return subprocess.Popen([sys.executable, '-I', WATCHDOG, str(parent_pid)],
                          stdin=subprocess.PIPE)


def test_sigkilled_parent_loses_its_workers_but_not_other_children():
  parent = subprocess.Popen([sys.executable, '-c', PARENT], stdout=subprocess.PIPE, text=True)
  worker_pid, bystander_pid = map(int, parent.stdout.readline().split())
  worker, bystander = psutil.Process(worker_pid), psutil.Process(bystander_pid)
  watchdog = _start(parent.pid)
  try:
    time.sleep(1.0)                 # several polls: the worker is recorded
    parent.kill()
    parent.wait()
    assert worker.is_running() and bystander.is_running()   # re-parented, still alive
    watchdog.stdin.close()          # the pipe's only writer is gone: end-of-file
    assert watchdog.wait(timeout=30) == 0
    gone, _ = psutil.wait_procs([worker], timeout=10)
    assert gone and not worker.is_running()
    assert bystander.is_running()
  finally:
    for process in (worker, bystander):
      try:
        process.kill()
      except psutil.NoSuchProcess:
        pass
    if watchdog.poll() is None:
      watchdog.kill()


def test_watchdog_of_a_live_parent_outlives_group_signals_and_exits_quietly_on_eof():
  watchdog = _start(os.getpid())
  time.sleep(0.5)
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # what a group kill sends
    watchdog.send_signal(signum)
  time.sleep(0.5)
  assert watchdog.poll() is None   # the parent lives: it keeps watching
  watchdog.stdin.close()
  assert watchdog.wait(timeout=30) == 0


def test_still_running_ignores_a_reused_pid():
  me = psutil.Process()
  assert worker_watchdog.still_running({me.pid: me.create_time() - 10.0}) == []


def test_bad_usage_is_one_line():
  result = subprocess.run([sys.executable, '-I', WATCHDOG, 'abc'], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0 and 'PARENT_PID' in result.stderr


def _descendants_alive(pids):
  return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != 'zombie']


def _launch(tmp_path, **popen_options):
  """`launch_workers --count=2` with TLS workers; returns the process and its children's pids
  (the worker processes and what they started) once it printed its --workers line."""
  from tests import run_support as rs  # pylint: disable=g-import-not-at-top
  certs = rs.make_worker_certs(tmp_path / 'certs', '127.0.0.1')
  from fedpara_tff import worker_bridge  # pylint: disable=g-import-not-at-top
  base = worker_bridge.free_port()   # and the next port: launch_workers refuses a taken one
  launcher = subprocess.Popen(
      [sys.executable, '-m', 'experiments.launch_workers', '--count=2', f'--base_port={base}',
       f'--tls_dir={certs}'], cwd=rs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, **popen_options)
  assert launcher.stdout.readline().startswith('--workers=')
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:   # the workers start their worker_binary
    tree = psutil.Process(launcher.pid).children(recursive=True)
    if sum(worker_watchdog.WORKER_NAME in ' '.join(p.cmdline()) for p in tree) >= 2:
      break
    time.sleep(0.5)
  return launcher, [p.pid for p in tree if 'worker_watchdog' not in ' '.join(p.cmdline())]


def _kill(launcher, pids):
  """Whatever a failed test left: the launcher and its children, SIGKILL."""
  for pid in [launcher.pid] + list(pids):
    try:
      psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
      pass
  launcher.wait(10)


def _gone_within(pids, seconds):
  deadline = time.monotonic() + seconds
  while _descendants_alive(pids) and time.monotonic() < deadline:
    time.sleep(0.2)
  return not _descendants_alive(pids)


@pytest.mark.slow
def test_a_sigkilled_launch_workers_leaves_no_worker_behind(tmp_path):
  """The issue's case: SIGKILL of `launch_workers --count=2` left both workers running and
  holding their ports. Its watchdog stops the worker processes and their worker_binary."""
  launcher, children = _launch(tmp_path)
  try:
    assert len(children) >= 4   # two worker processes, each with its worker_binary (and bridge)
    launcher.kill()
    launcher.wait(10)
    assert _gone_within(children, 30), [psutil.Process(p).cmdline() for p in
                                         _descendants_alive(children)]
  finally:
    _kill(launcher, children)


@pytest.mark.slow
def test_a_backgrounded_launch_workers_stops_on_sigint(tmp_path):
  """Started as a shell starts a background job (SIGINT ignored), it still stops on SIGINT."""
  launcher, children = _launch(
      tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
  try:
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(60) == 0
    assert _gone_within(children, 30)
  finally:
    _kill(launcher, children)
