"""Which files of a run folder a run wrote, judged by what they hold, never by their name alone.

`--overwrite` removes a file only when it is the run's: the folder's `run.json` is a run's
(a JSON object with the flags every run records), and each other file is in the format the run
writes it in (its metrics header, its summary keys, a checkpoint's `meta` entry, an SQLite store
with its tables, a plot or TensorBoard file marked as ours when written). Anything else is
foreign: the folder is then refused, naming it, and nothing is deleted.
"""

import json
import os
import re
import sqlite3
import zipfile

from fedpara_tff import client_store

# The files a run writes into its folder (`experiments.run_io` names them from here).
RUN_FILE = 'run.json'
METRICS_FILE = 'metrics.csv'
SUMMARY_FILE = 'summary.json'
PLOT_FILE = 'accuracy_vs_gb.png'
STORE_FILE = client_store.FILE_NAME
# Written into every plot's PNG metadata (`plot.plot_runs`) and into the TensorBoard event file
# names (`run_io.MetricsWriter`), so that both can be told apart from another tool's files.
MARK = 'fedpara-tff'
EVENTS_SUFFIX = '.' + MARK
# Keys every run.json holds (`run_config.RunConfig.identity`).
RUN_KEYS = frozenset(('dataset', 'model', 'parameterization', 'seed'))
SUMMARY_KEYS = frozenset(('parameterization', 'gb_total', 'test_accuracy', 'output_dir'))
_STORE_COMPANIONS = ('-wal', '-shm', '-journal')


def _json_object(path):
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def run_file_state(folder):
  """What `folder/run.json` is: 'run' (a run's), 'damaged' (not JSON: a run's, cut short by a
  full disk or a crash, its other files then judged by content), 'other' (JSON that is not a
  run's: another tool's file) or None (there is none)."""
  path = os.path.join(folder, RUN_FILE)
  if not os.path.isfile(path) or os.path.islink(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return 'damaged'
  return 'run' if isinstance(value, dict) and RUN_KEYS <= set(value) else 'other'


def _is_metrics(path):
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      header = f.readline().strip().split(',')
  except OSError:
    return False
  return header[:1] == ['round'] and 'bytes_uploaded' in header


def _is_summary(path):
  value = _json_object(path)
  return value is not None and SUMMARY_KEYS <= set(value)


def is_plot(path, in_run_folder=False):
  """True for a PNG that `plot.plot_runs` wrote: its metadata carries `MARK`. In a run folder
  (beside a run's run.json) also a plain matplotlib PNG, as versions before the mark wrote."""
  try:
    with open(path, 'rb') as f:
      head = f.read(4096)   # PNG text chunks come before the image data
  except OSError:
    return False
  marks = (MARK.encode(), b'Matplotlib') if in_run_folder else (MARK.encode(),)
  return head.startswith(b'\x89PNG') and any(mark in head for mark in marks)


def _is_checkpoint(path):
  try:
    with zipfile.ZipFile(path) as archive:
      return 'meta.npy' in archive.namelist()
  except (OSError, zipfile.BadZipFile):
    return False


def _is_store(path):
  try:
    with open(path, 'rb') as f:
      if f.read(16) != b'SQLite format 3\x00':
        return False
    connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
      tables = {row[0] for row in connection.execute(
          "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
      connection.close()
  except (OSError, sqlite3.Error):
    return False
  return {'clients', 'meta'} <= tables


# File name -> the check that it holds what a run writes there.
# (run.json itself is judged by `run_file_state`.)
_FILES = {METRICS_FILE: _is_metrics, SUMMARY_FILE: _is_summary,
          PLOT_FILE: lambda path: is_plot(path, in_run_folder=True), STORE_FILE: _is_store}
_DIRS = {'checkpoints': (re.compile(r'ckpt-\d+\.npz$'), _is_checkpoint),
         'tensorboard': (re.compile(r'events\.out\.tfevents\..*' + re.escape(EVENTS_SUFFIX) + '$'),
                         lambda path: True)}
# A run's temporary files (an interrupted atomic write): its own only beside its run.json.
_TEMPORARY = re.compile('(' + '|'.join(re.escape(name) for name in (
    RUN_FILE, METRICS_FILE, SUMMARY_FILE, PLOT_FILE)) + r')\.tmp$')
_TEMPORARY_CHECKPOINT = re.compile(r'ckpt-\d+\.npz\.tmp\.npz$')


def _owned_file(folder, name):
  path = os.path.join(folder, name)
  if os.path.islink(path) or not os.path.isfile(path):
    return False
  if name in _FILES:
    return _FILES[name](path)
  if _TEMPORARY.match(name):
    return True
  return (any(name == STORE_FILE + suffix for suffix in _STORE_COMPANIONS)
          and _is_store(os.path.join(folder, STORE_FILE)))


def _foreign_inside(folder, name):
  """The first entry of the run's sub-folder `name` that is not the run's, or None."""
  pattern, check = _DIRS[name]
  path = os.path.join(folder, name)
  for entry in sorted(os.listdir(path)):
    inside = os.path.join(path, entry)
    if os.path.islink(inside) or not os.path.isfile(inside):
      return inside
    if name == 'checkpoints' and _TEMPORARY_CHECKPOINT.match(entry):
      continue
    if not (pattern.match(entry) and check(inside)):
      return inside
  return None


def foreign_entry(folder):
  """The first entry of the run folder `folder` (sorted) that is not the run's, or None.

  Nothing in a folder without a run's `run.json` is the run's: its first entry is returned.
  """
  entries = sorted(os.listdir(folder))
  state = run_file_state(folder)
  if state == 'other':
    return os.path.join(folder, RUN_FILE)
  if state is None:
    return os.path.join(folder, entries[0]) if entries else None
  for name in entries:
    if name == RUN_FILE:
      continue
    path = os.path.join(folder, name)
    if name in _DIRS and os.path.isdir(path) and not os.path.islink(path):
      foreign = _foreign_inside(folder, name)
      if foreign is not None:
        return foreign
    elif not _owned_file(folder, name):
      return path
  return None
