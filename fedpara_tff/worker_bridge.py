"""Runs a TFF `worker_binary` in this process's private network namespace, served on a Unix socket.

TFF 0.87's `worker_binary` listens on every interface of its network namespace (`[::]:PORT`; it
has no bind-address flag) and runs any computation sent to it. `fedpara_tff.local_worker` starts
this file (`python -I`, standard library only) inside a new network namespace (`unshare --net`,
with a user namespace when not root), where the only interface is a loopback that no other
namespace can reach. Here it

1. brings that loopback up (the `SIOCSIFFLAGS` ioctl, so no `ip` binary is needed),
2. starts the worker on a port of it,
3. serves a Unix socket at SOCKET_PATH (its folder is private to the user; Unix sockets are
   files, so the driver, outside the namespace, reaches it), forwarding every connection to the
   worker's port byte for byte (gRPC traffic, unchanged),
4. prints `ready` once the worker accepts connections, and stops the worker and itself when its
   standard input (a pipe held by the driver) reads end-of-file, i.e. when the driver exits
   however it died, or when the worker exits.

Usage: `python -I worker_bridge.py SOCKET_PATH`, with the worker's command line as the first line
of standard input, a JSON list (the worker's `--port` is added here). It is not an argument so
that only the worker's own command line names `data/worker_binary`, which is how
`fedpara_tff.worker_watchdog` and the tests recognise a TFF worker.
"""

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
START_TIMEOUT_S = 60.0
POLL_S = 0.2
GRACE_S = 2.0
CHUNK = 1 << 20


def loopback_up():
  """Brings `lo` up (a new network namespace starts with it down)."""
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack('16sH14x', b'lo', 0)
    flags = struct.unpack('16sH14x', fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack('16sH14x', b'lo', flags | IFF_UP))


def free_port():
  """A TCP port free on every interface (of this network namespace)."""
  with socket.socket() as s:
    s.bind(('', 0))
    return s.getsockname()[1]


def wait_for_port(port, worker, timeout=START_TIMEOUT_S):
  """Waits until 127.0.0.1:`port` accepts; False if `worker` exits or `timeout` passes first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and worker.poll() is None:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1.0).close()
      return True
    except OSError:
      time.sleep(0.05)
  return False


def pump(source, sink):
  """Copies `source` to `sink` until end-of-file, then half-closes `sink`."""
  try:
    while True:
      data = source.recv(CHUNK)
      if not data:
        break
      sink.sendall(data)
  except OSError:
    pass
  finally:
    for end, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
      try:
        end.shutdown(how)
      except OSError:
        pass


def forward(client, port):
  """Joins one driver connection to a new connection to the worker."""
  try:
    upstream = socket.create_connection(('127.0.0.1', port))
  except OSError:
    client.close()
    return
  upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  threads = [threading.Thread(target=pump, args=pair, daemon=True)
             for pair in ((client, upstream), (upstream, client))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  client.close()
  upstream.close()


def serve(listener, port):
  while True:
    try:
      client, _ = listener.accept()
    except OSError:
      return
    threading.Thread(target=forward, args=(client, port), daemon=True).start()


def _read_line(fd):
  """One line from `fd`, read byte by byte (nothing after it is consumed)."""
  data = b''
  while not data.endswith(b'\n'):
    byte = os.read(fd, 1)
    if not byte:
      break
    data += byte
  return data.decode()


def stop(worker):
  if worker.poll() is None:
    worker.send_signal(signal.SIGINT)
    try:
      worker.wait(GRACE_S)
    except subprocess.TimeoutExpired:
      worker.kill()
      worker.wait()


def main(argv):
  if len(argv) != 2:
    sys.stderr.write(f'usage: {argv[0]} SOCKET_PATH (the worker command on stdin, JSON)\n')
    return 2
  for signum in (signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)   # the driver decides; its exit closes our stdin
  socket_path = argv[1]
  stdin = sys.stdin.buffer.raw
  command = json.loads(_read_line(stdin.fileno()))
  loopback_up()
  port = free_port()
  worker = subprocess.Popen(command + [f'--port={port}'], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
  signal.signal(signal.SIGTERM, lambda *_: (stop(worker), os._exit(143)))  # pylint: disable=protected-access
  try:
    if not wait_for_port(port, worker):
      sys.stderr.write(f'worker_bridge: the TFF worker did not start (exit code {worker.poll()})\n')
      return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    threading.Thread(target=serve, args=(listener, port), daemon=True).start()
    try:
      sys.stdout.write('ready\n')
      sys.stdout.flush()
    except BrokenPipeError:   # the driver exited while the worker started: nothing to serve
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no flush error at exit
      return 0
    while worker.poll() is None:
      ready, _, _ = select.select([stdin], [], [], POLL_S)
      if ready and not os.read(stdin.fileno(), 4096):
        break
    return 0
  finally:
    stop(worker)
    try:
      os.unlink(socket_path)
    except OSError:
      pass


def run(argv):
  """`main`, with any failure as one line on stderr (no traceback) and exit code 1."""
  try:
    return main(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.stderr.write(f'worker_bridge: error: {type(e).__name__}: {e}\n')
    return 1


if __name__ == '__main__':
  sys.exit(run(sys.argv))
