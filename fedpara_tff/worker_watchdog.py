"""A watchdog process that stops a parent's TFF `worker_binary` processes when the parent dies.

SIGKILL cannot be caught, so a process killed that way never runs its exit hook
and its TFF workers are re-parented and keep running (docs/DESIGN.md, "TFF
runtime facts"). `fedpara_tff.runtime.guard_workers()` starts this file as a
separate Python process (by path, with `python -I`, so it imports only the
standard library and psutil, not TensorFlow): it holds the read end of a pipe
whose write end only the parent holds. While the parent lives, the watchdog
records the parent's `worker_binary` descendants every `POLL_S` seconds; when
the pipe reaches end-of-file (the parent has exited, however it died), it stops
the recorded workers that are still the same processes (same pid and start
time): SIGINT as TFF does, then SIGKILL after `GRACE_S`. A parent that exited
cleanly has stopped its workers already, so then nothing is left to stop.

The parent may also name other processes it wants stopped with it (`launch_workers` names the
worker processes it started): it writes each pid as a line on the pipe, and the watchdog records
that process (pid and start time) and stops it at end-of-file too, if it is still that process.

It ignores SIGINT, SIGTERM and SIGHUP, which reach a whole process group on
Ctrl-C, `kill -TERM -PGID` or a closed terminal: the parent handles them (or dies
of them) and the watchdog must outlive it to clean up after it; it ends at the
pipe's end-of-file, i.e. with the parent.

Usage (by `runtime.guard_workers`): `python -I worker_watchdog.py PARENT_PID` with
the pipe's read end as standard input.
"""

import os
import select
import signal
import sys

import psutil

WORKER_NAME = 'data/worker_binary'
POLL_S = 0.2
GRACE_S = 2.0


def _is_worker(process):
  try:
    return any(WORKER_NAME in part for part in process.cmdline())
  except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
    return False


def record_workers(parent, known):
  """Adds `parent`'s live `worker_binary` descendants to `known` ({pid: create_time})."""
  try:
    children = parent.children(recursive=True)
  except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
    return known
  for child in children:
    if child.pid not in known and _is_worker(child):
      try:
        known[child.pid] = child.create_time()
      except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        continue
  return known


def still_running(known):
  """The processes of `known` ({pid: create_time}) that are still those very workers."""
  return [process for process in same_processes(known) if _is_worker(process)]


def stop(processes, grace_s=GRACE_S, signum=signal.SIGINT):
  """`signum` (SIGINT: what TFF's worker stops on) to each of `processes`, SIGKILL to those still
  alive after `grace_s`."""
  for process in processes:
    try:
      process.send_signal(signum)
    except psutil.NoSuchProcess:
      pass
  _, alive = psutil.wait_procs(processes, timeout=grace_s)
  for process in alive:
    try:
      process.kill()
    except psutil.NoSuchProcess:
      pass


def record_named(lines, named):
  """Adds the processes whose pids `lines` (complete lines of decimal pids) name to `named`
  ({pid: create_time}); a pid that is gone is skipped."""
  for line in lines:
    if line.strip().isdigit():
      try:
        named[int(line)] = psutil.Process(int(line)).create_time()
      except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        continue
  return named


def same_processes(named):
  """The processes of `named` ({pid: create_time}) that are still those very processes."""
  alive = []
  for pid, created in named.items():
    try:
      process = psutil.Process(pid)
      if process.create_time() == created:
        alive.append(process)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
      continue
  return alive


def watch(parent_pid, pipe_fd, poll_s=POLL_S):
  """Records `parent_pid`'s workers (and the processes named on the pipe) until `pipe_fd`
  reads end-of-file; returns how many it stopped."""
  try:
    parent = psutil.Process(parent_pid)
  except psutil.NoSuchProcess:
    return 0
  known, named, pending = {}, {}, b''
  while True:
    record_workers(parent, known)
    ready, _, _ = select.select([pipe_fd], [], [], poll_s)
    if not ready:
      continue
    data = os.read(pipe_fd, 4096)
    if not data:
      break
    *lines, pending = (pending + data).split(b'\n')
    record_named([line.decode('ascii', 'replace') for line in lines], named)
  alive = still_running(known)
  alive += [p for p in same_processes(named) if p.pid not in {a.pid for a in alive}]
  stop(alive)
  return len(alive)


def main(argv):
  if len(argv) != 2 or not argv[1].isdigit():
    sys.stderr.write(f'usage: {argv[0]} PARENT_PID (the pipe from the parent on stdin)\n')
    return 2
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
  watch(int(argv[1]), sys.stdin.fileno())
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
