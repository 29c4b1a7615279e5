"""Checks shared by the worker binaries: a free port, one security choice."""

import socket


def check_port_free(port, program='worker'):
  """Refuses a port something already listens on.

  TFF's worker binds with SO_REUSEPORT, so a second worker on a served port
  would start without error and share (or steal) its connections.
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.settimeout(1.0)
    if probe.connect_ex(('127.0.0.1', port)) == 0:
      raise SystemExit(f'{program}: port {port} is already in use (something listens on it); '
                       f'choose another port.')


def check_security_choice(tls_dir, insecure, program):
  """Refuses, in one line, anything but exactly one of --tls_dir and --insecure.

  Checked in `main`, not by a flag validator: tests import the worker binaries beside the
  training binary and parse all their flags in one process.
  """
  if bool(tls_dir) == bool(insecure):
    raise SystemExit(f'{program}: error: give --tls_dir (mutual TLS; scripts/make_worker_certs.sh '
                     f'makes the files) or --insecure (plain gRPC: whoever reaches the port runs '
                     f'code), exactly one.')
