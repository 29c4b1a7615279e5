"""What the end-to-end tests of the training binary share: a tiny run's config, its metrics
rows, its command line, and the certificates of TLS workers."""

import csv
import dataclasses
import os
import shutil
import subprocess
import sys

from experiments import run_config
from experiments import run_io
from experiments import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset='mnist5k', model='mlp', clients=6, clients_per_round=2, rounds=2,
            batch_size=64, progress=False)


def config(tmp_path, name='run', **overrides):
  """A tiny run (`TINY` with `overrides`) in `tmp_path / name`, caching its partition beside."""
  return run_config.RunConfig(output_dir=str(tmp_path / name), cache_dir=str(tmp_path / 'cache'),
                              **{**TINY, **overrides})


_FINISHED = {}   # sorted overrides -> the config of a finished run with them (read only)


def finished(tmp_path_factory, **overrides):
  """The finished tiny run of `overrides` (`config`), run once per test process and shared by
  the tests that only read it."""
  key = tuple(sorted({**TINY, **overrides}.items()))   # TINY's own values name the same run
  if key not in _FINISHED:
    run = config(tmp_path_factory.mktemp('finished'), 'run', **overrides)
    runner.run(run)
    _FINISHED[key] = run
  return _FINISHED[key]


def finished_copy(tmp_path_factory, tmp_path, name='run', **overrides):
  """`config(tmp_path, name, **overrides)` holding a copy of the shared finished run
  (`finished`), for a test that changes or damages it; its partition cache is its own. The run
  folder's path is not part of a run's identity, so the copy resumes as the run would."""
  run = config(tmp_path, name, **overrides)
  shutil.copytree(finished(tmp_path_factory, **overrides).output_dir, run.output_dir)
  return run


def rows(run_dir):
  """The rows of a run folder's metrics.csv, as dicts of strings."""
  with open(os.path.join(run_dir, run_io.METRICS_FILE), newline='') as f:
    return list(csv.DictReader(f))


def train_command(config_):
  """`python -m experiments.train` with the flags of `config_`."""
  args = [sys.executable, '-m', 'experiments.train', '--progress=false']
  for key, value in dataclasses.asdict(config_).items():
    if key == 'progress' or value is None:
      continue
    if isinstance(value, bool):
      args.append(f'--{key}' if value else f'--no{key}')
    elif isinstance(value, tuple):
      args.append(f'--{key}={",".join(value)}')
    else:
      args.append(f'--{key}={value}')
  return args


def binary(*args):
  """Runs `python -m experiments.train *args` from the repository; returns the result."""
  return subprocess.run([sys.executable, '-m', 'experiments.train', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def make_worker_certs(folder, *hosts):
  """The run's CA and certificates for workers at `hosts`, written into `folder` by
  `scripts/make_worker_certs.sh`; returns `folder`."""
  subprocess.run([os.path.join(REPO, 'scripts', 'make_worker_certs.sh'), str(folder), *hosts],
                 check=True, capture_output=True, timeout=60)
  return folder
