"""Mutual TLS between a driver and its remote TFF workers.

TFF 0.87's `worker_binary` speaks plain gRPC and runs any computation sent to it
(docs/DESIGN.md, "Who can reach a TFF worker"). A remote worker therefore runs as a local worker
does, in a private network namespace behind a Unix socket (`fedpara_tff.local_worker`), and
`serve` puts a TLS endpoint in front of that socket: it accepts a connection only from a client
whose certificate the run's CA signed, and forwards the decrypted bytes (the gRPC stream,
unchanged) to the worker. The driver connects with `channel_credentials`: gRPC's own TLS,
presenting its certificate and checking the worker's against the same CA and the address it
dialled.

TLS itself is OpenSSL's, through Python's `ssl` module on the worker and gRPC's on the driver;
nothing here implements cryptography. `scripts/make_worker_certs.sh` makes a CA and the
certificates (`ca.pem`; `driver.pem` / `driver.key`; `worker.pem` / `worker.key`, valid for the
workers' host names and addresses).
"""

import asyncio
import dataclasses
import ipaddress
import os
import signal
import socket
import ssl
import sys

CA_FILE = 'ca.pem'
PEER_FILES = {'driver': ('driver.pem', 'driver.key'), 'worker': ('worker.pem', 'worker.key')}
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class TLSFiles:
  """PEM files of one side: the CA that signs both sides, this side's certificate and key."""
  ca: str
  cert: str
  key: str

  @classmethod
  def from_dir(cls, folder, side):
    """The files `scripts/make_worker_certs.sh` writes for `side` ('driver' or 'worker'), each
    checked (`check`).

    Raises:
      ValueError: one line naming the missing or unusable file.
    """
    cert, key = PEER_FILES[side]
    files = cls(*(os.path.join(folder, name) for name in (CA_FILE, cert, key)))
    missing = [path for path in dataclasses.astuple(files) if not os.path.isfile(path)]
    if missing:
      raise ValueError(f'TLS folder {folder!r} lacks {", ".join(missing)}; make the files with '
                       f'scripts/make_worker_certs.sh.')
    return files.check()

  def check(self):
    """`self` once OpenSSL loads the CA, and the certificate with its own private key; else a
    ValueError naming the file. Warns (stderr) when the key is readable by other users (by all,
    or by a group this process is not in)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
      context.load_verify_locations(self.ca)
    except (ssl.SSLError, OSError) as e:
      raise ValueError(f'TLS CA file {self.ca} does not load as PEM certificates '
                       f'({_reason(e)}); remake it with scripts/make_worker_certs.sh.') from None
    try:
      context.load_cert_chain(self.cert, self.key)
    except (ssl.SSLError, OSError) as e:
      raise ValueError(f'TLS files {self.cert} and {self.key} do not load as a certificate and '
                       f'its own private key ({_reason(e)}); remake them with '
                       f'scripts/make_worker_certs.sh.') from None
    stat = os.stat(self.key)
    mode = stat.st_mode & 0o777
    # A key readable by its group is fine where that group is this process's own (a Kubernetes
    # Secret mounted 0440 for the pod's fsGroup); by anyone else, it is not.
    own_group = stat.st_gid in {os.getegid(), *os.getgroups()}
    if mode & 0o007 or (mode & 0o070 and not own_group):
      sys.stderr.write(f'fedpara_tff: warning: private key {self.key} is readable by other users '
                       f'(mode {mode:o}): whoever reads it can pose as this side; chmod 600 '
                       f'{self.key}.\n')
      sys.stderr.flush()
    return self


def _reason(error):
  return getattr(error, 'reason', None) or getattr(error, 'strerror', None) or str(error)


def handshake_problem(address, files, timeout=5.0):
  """Why a mutual-TLS handshake with the worker at `address` fails, in words, or None when it
  succeeds or nothing answers there (then the worker is simply unreachable). The driver's gRPC
  reports only that the channel never became ready; this asks OpenSSL directly."""
  host, _, port = address.rpartition(':')
  host = host.strip('[]')
  context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
  context.load_cert_chain(files.cert, files.key)
  context.set_alpn_protocols(['h2'])
  try:
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
      with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.recv(0)   # TLS 1.3: a refused client certificate is reported after the handshake
  except ssl.SSLCertVerificationError as e:
    return (f'its certificate is not accepted: {e.verify_message} (checked against CA '
            f'{files.ca} and the name {host})')
  except ssl.SSLError as e:
    reason = (e.reason or '').upper()
    if 'WRONG_VERSION_NUMBER' in reason or 'RECORD_LAYER' in reason or 'PACKET_LENGTH' in reason:
      return 'it does not speak TLS (a plain worker, started with --insecure?)'
    if 'CERTIFICATE' in reason or 'UNKNOWN_CA' in reason or 'BAD_CERTIFICATE' in reason:
      return (f'it refused the driver\'s certificate {files.cert} ({e.reason}): the worker trusts '
              f'another CA')
    return f'the TLS handshake failed ({e.reason or e})'
  except (OSError, ValueError):
    return None
  return None


def is_loopback(address):
  """True if `host:port` names this host's loopback (localhost, 127.0.0.0/8, ::1)."""
  host = address.rpartition(':')[0].strip('[]')
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def channel_credentials(files):
  """gRPC credentials of the driver: its certificate, and the CA that must sign the worker's."""
  import grpc  # pylint: disable=import-outside-toplevel
  with open(files.ca, 'rb') as ca, open(files.cert, 'rb') as cert, open(files.key, 'rb') as key:
    return grpc.ssl_channel_credentials(root_certificates=ca.read(), private_key=key.read(),
                                        certificate_chain=cert.read())


def server_context(files):
  """The worker's TLS context: its certificate, and a client certificate signed by the CA
  required (TLS 1.2 or later, HTTP/2 negotiated as gRPC expects)."""
  context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.ca)
  context.load_cert_chain(files.cert, files.key)
  context.verify_mode = ssl.CERT_REQUIRED
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  context.set_alpn_protocols(['h2'])
  return context


async def _pump(reader, writer):
  try:
    while data := await reader.read(CHUNK):
      writer.write(data)
      await writer.drain()
  except (ConnectionError, ssl.SSLError):
    pass
  finally:
    try:
      writer.close()
    except (ConnectionError, ssl.SSLError, RuntimeError):
      pass


def _connector(worker_target):
  """A coroutine function opening a connection to the worker at `worker_target`:
  `unix:<path>` (the isolated worker's socket) or `host:port` (a TCP port, `--isolation=pod`)."""
  if worker_target.startswith('unix:'):
    path = worker_target[len('unix:'):]
    return lambda: asyncio.open_unix_connection(path)
  host, _, port = worker_target.rpartition(':')
  return lambda: asyncio.open_connection(host, int(port))


async def _serve(host, port, worker_target, context, ready):
  connect = _connector(worker_target)

  async def forward(client_reader, client_writer):
    try:
      worker_reader, worker_writer = await connect()
    except OSError:
      client_writer.close()
      return
    try:
      await asyncio.gather(_pump(client_reader, worker_writer),
                           _pump(worker_reader, client_writer))
    except asyncio.CancelledError:
      pass   # shutting down: the connection ends with the server

  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for signum in (signal.SIGINT, signal.SIGTERM):
    loop.add_signal_handler(signum, stop.set)
  server = await asyncio.start_server(forward, host, port, ssl=context)
  ready(server)
  async with server:
    await stop.wait()


def serve(port, worker_target, files, host=None, ready=lambda server: None):
  """Serves TLS on `host:port` (default: every interface) for the worker at `worker_target`
  (`unix:<path>`: the isolated worker's Unix socket; `host:port`: its TCP port, in a Kubernetes
  pod) until SIGINT or SIGTERM; `ready(server)` is called once listening. With `files` None it
  forwards plain, unauthenticated gRPC instead (`experiments.worker --insecure`, by default on
  loopback only).

  Raises:
    ssl.SSLError, OSError: unreadable certificates, a port in use.
  """
  context = server_context(files) if files is not None else None
  asyncio.run(_serve(host, port, worker_target, context, ready))
