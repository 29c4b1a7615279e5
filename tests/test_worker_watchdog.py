"""The worker watchdog stops a dead parent's `worker_binary` processes and nothing else."""

import os
import signal
import subprocess
import sys
import time

import psutil

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
