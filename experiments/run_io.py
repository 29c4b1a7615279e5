"""A run's output folder: its flags, per-round metrics (CSV and TensorBoard) and summary.

Layout of `--output_dir`:
  run.json          the flags that define the run (a restart must match them)
  metrics.csv       one row per round (`COLUMNS`)
  tensorboard/      the same scalars as TensorBoard events
  checkpoints/      `ckpt-<round>.npz` (see `experiments.checkpoints`)
  summary.json      the final row plus parameter counts, written at the end
  accuracy_vs_gb.png  accuracy against cumulative communication
"""

import contextlib
import csv
import fcntl
import io
import json
import math
import os

from experiments import ownership

# The aggregation error of the factorised kernels (`fedpara_tff.aggregation_error`): mean and max
# over the kernels of the share of the round's kernel update, then of the kernel (empty for a
# model without factorised kernels).
AGGREGATION_ERROR_COLUMNS = ('aggregation_error_mean', 'aggregation_error_max',
                             'aggregation_error_kernel_mean', 'aggregation_error_kernel_max')
COLUMNS = ('round', 'clients', 'diverged_clients', 'train_loss', 'train_accuracy', 'test_loss',
           'test_accuracy', 'personalized_accuracy', 'personalized_clients', 'bytes_uploaded',
           'bytes_downloaded', 'cumulative_gb', 'wall_time_s') + AGGREGATION_ERROR_COLUMNS
# Headers of metrics files written before the aggregation error, and before
# `personalized_clients`, existed (read, then rewritten with `COLUMNS` on resume).
LEGACY_HEADERS = (tuple(c for c in COLUMNS if c not in AGGREGATION_ERROR_COLUMNS),
                  tuple(c for c in COLUMNS if c not in AGGREGATION_ERROR_COLUMNS
                        and c != 'personalized_clients'))
RUN_FILE = ownership.RUN_FILE
METRICS_FILE = ownership.METRICS_FILE
SUMMARY_FILE = ownership.SUMMARY_FILE
PLOT_FILE = ownership.PLOT_FILE


class RunConflictError(ValueError):
  """The output folder holds a run with other flags."""


def _no_run(output_dir, first):
  return RunConflictError(
      f'output_dir {output_dir} holds no run (no run.json written by a run; it holds {first}); '
      f'nothing was deleted: choose another --output_dir, or empty it yourself.')


def remove_run(output_dir):
  """Removes what a run wrote in `output_dir`; refuses (naming it) a folder with anything else
  or with no run's `run.json`, and then deletes nothing."""
  foreign = ownership.foreign_entry(output_dir)
  if foreign is not None and ownership.run_file_state(output_dir) in (None, 'other'):
    raise _no_run(output_dir, foreign)
  if foreign is not None:
    raise RunConflictError(f'--overwrite refused: output_dir {output_dir} holds {foreign}, which '
                           f'a run did not write; nothing was deleted. Choose another '
                           f'--output_dir or move that file.')
  for name in sorted(os.listdir(output_dir)):
    path = os.path.join(output_dir, name)
    if os.path.isdir(path):
      for entry in os.listdir(path):
        os.remove(os.path.join(path, entry))
      os.rmdir(path)
    else:
      os.remove(path)


def _lock_holder(folder):
  """The pid holding a `flock` on `folder` (from /proc/locks), or None when unknown."""
  info = os.stat(folder)
  device = f'{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}'
  try:
    with open('/proc/locks', encoding='ascii') as f:
      for line in f:
        fields = line.split()
        if 'FLOCK' in fields and device in fields:
          return int(fields[fields.index(device) - 1])
  except (OSError, ValueError):
    pass
  return None


@contextlib.contextmanager
def locked(output_dir):
  """Holds `output_dir` for this run (an exclusive `flock` on the folder itself, so no lock file
  is written; released when the run ends, however the process dies), creating the folder.

  Raises:
    RunConflictError: another process holds it (a run in progress), naming its pid; or
      `output_dir` is a file.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise RunConflictError(f'output_dir {output_dir} is a file, not a folder; choose another '
                           f'--output_dir.')
  try:
    os.makedirs(output_dir, exist_ok=True)
    fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
  except OSError as e:
    raise RunConflictError(f'output_dir {output_dir} cannot be written ({e.strerror}: '
                           f'{e.filename}); choose another --output_dir.') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _lock_holder(output_dir)
      raise RunConflictError(
          f'output_dir {output_dir} is in use by another run (pid '
          f'{holder if holder is not None else "unknown"}); nothing was changed: wait for it to '
          f'end or choose another --output_dir.') from None
    yield
  finally:
    os.close(fd)


def prepare(output_dir, run_flags, overwrite):
  """Creates `output_dir` for a run, or checks that it holds this same run.

  Returns True when a previous run of the same flags is there (resume).

  With `overwrite`, only what a run wrote (judged by content, `experiments.ownership`) is
  removed, and only when the folder holds nothing else.

  Raises:
    RunConflictError: the folder holds a run with other flags (and not
      `overwrite`), files a run did not write, or no run's run.json.
  """
  path = os.path.join(output_dir, RUN_FILE)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise RunConflictError(f'output_dir {output_dir} is a file, not a folder; choose another '
                           f'--output_dir.')
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    if ownership.run_file_state(output_dir) in (None, 'other'):
      raise _no_run(output_dir, ownership.foreign_entry(output_dir))
    if overwrite:
      remove_run(output_dir)
    else:
      previous = _read_run_file(path)
      changed = sorted(k for k in set(previous) | set(run_flags)
                       if previous.get(k) != run_flags.get(k))
      if changed:
        detail = ', '.join(f'{k}: {previous.get(k)!r} -> {run_flags.get(k)!r}' for k in changed[:4])
        raise RunConflictError(f'output_dir {output_dir} holds a run with different flags '
                               f'({detail}); pass --overwrite to replace it or choose another '
                               f'--output_dir.')
      return True
  temporary = path + '.tmp'
  try:
    os.makedirs(output_dir, exist_ok=True)
    with open(temporary, 'w') as f:
      json.dump(run_flags, f, indent=1, sort_keys=True)
    os.replace(temporary, path)
  except OSError as e:
    raise RunConflictError(f'output_dir {output_dir} cannot be written ({e.strerror}: '
                           f'{e.filename}); choose another --output_dir.') from None
  return False


INTEGER_COLUMNS = ('round', 'clients', 'diverged_clients', 'personalized_clients', 'bytes_uploaded',
                   'bytes_downloaded')


class DamagedFileError(ValueError):
  """A file of the run folder cannot be read back."""


class NoRunError(ValueError):
  """The folder holds no run (no `run.json`)."""


def read_run(output_dir):
  """The flags of the run in `output_dir` (its `run.json`, a dict).

  Raises:
    NoRunError: the folder holds no `run.json`.
    DamagedFileError: it is not a JSON object.
  """
  path = os.path.join(output_dir, RUN_FILE)
  if not os.path.isfile(path):
    raise NoRunError(f'{output_dir} holds no run (no {RUN_FILE}).')
  return _read_run_file(path)


def _read_run_file(path):
  try:
    with open(path) as f:
      previous = json.load(f)
    if not isinstance(previous, dict):
      raise ValueError('not a JSON object')
  except (ValueError, UnicodeDecodeError) as e:
    raise DamagedFileError(f'{path} is damaged ({e}); it names the flags of the run in this '
                           f'folder: restore it, or pass --overwrite to start the run again.'
                           ) from None
  return previous


def read_metrics(output_dir):
  """The rows of `metrics.csv` as dicts of floats (empty cells -> NaN).

  Raises:
    DamagedFileError: the file is not a metrics table (named, with what to do).
  """
  path = os.path.join(output_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path, newline='') as f:
      text = f.read()
    # Every row ends with a newline: a last line without one was cut short (a short write on a
    # full disk, a kill mid-write) and is not a row.
    if not text.endswith('\n') and '\n' in text:
      text = text[:text.rindex('\n') + 1]
    with io.StringIO(text, newline='') as f:
      reader = csv.DictReader(f)
      if reader.fieldnames is not None and tuple(reader.fieldnames) not in (COLUMNS,
                                                                            *LEGACY_HEADERS):
        raise ValueError(f'its header is not {",".join(COLUMNS)}')
      rows = [{k: (float(v) if v not in ('', None) else math.nan) for k, v in row.items()}
              for row in reader]
    if any(None in row or math.isnan(row['round']) for row in rows):
      raise ValueError('a row has missing or extra cells')
  except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as e:
    raise DamagedFileError(f'{path} is damaged ({e}); move it away and rerun to resume from the '
                           f'last checkpoint (its rows up to there are lost), or pass --overwrite '
                           f'to start the run again.') from None
  return rows


class MetricsWriter:
  """Appends one row per round to `metrics.csv` and TensorBoard.

  On resume from round k, rows after k (written before the kill) are dropped
  first, so the CSV holds each round once.

  Raises:
    DamagedFileError: on resume, the rows of rounds up to k are not all there (the file was
      deleted, or cut short before round k's checkpoint).
  """

  def __init__(self, output_dir, resume_round=0):
    self._path = os.path.join(output_dir, METRICS_FILE)
    kept = [r for r in read_metrics(output_dir) if r['round'] <= resume_round]
    if [int(r['round']) for r in kept] != list(range(1, resume_round + 1)):
      missing = sorted(set(range(1, resume_round + 1)) - {int(r['round']) for r in kept})
      raise DamagedFileError(
          f'{self._path} lacks the rows of rounds {format_ranges(missing)} that the checkpoint of '
          f'round {resume_round} follows (the file was deleted or cut short), so the history '
          f'cannot be continued; nothing was changed: restore the file, or pass --overwrite to '
          f'start the run again.')
    temporary = self._path + '.tmp'
    with open(temporary, 'w', newline='') as f:
      writer = csv.DictWriter(f, COLUMNS)
      writer.writeheader()
      for row in kept:
        writer.writerow({k: _cell(row.get(k), k) for k in COLUMNS})
    os.replace(temporary, self._path)
    board = os.path.join(output_dir, 'tensorboard')
    if os.path.lexists(board) and not os.path.isdir(board):
      raise DamagedFileError(f'{board} is a file, not the run\'s TensorBoard folder; move it '
                             f'away and rerun the same command.')
    # The suffix marks the event files as this run's (`experiments.ownership`).
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # run_io loads without TF
    self._tf = tf
    self._summary = tf.summary.create_file_writer(board, filename_suffix=ownership.EVENTS_SUFFIX)

  def write(self, row):
    with open(self._path, 'a', newline='') as f:
      csv.DictWriter(f, COLUMNS).writerow({k: _cell(row.get(k), k) for k in COLUMNS})
    with self._summary.as_default():
      scalars = {key: row.get(key) for key in COLUMNS[1:]}
      scalars.update(row.get('per_kernel') or {})   # e.g. each kernel's aggregation error
      for key, value in scalars.items():
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
          self._tf.summary.scalar(key, float(value), step=int(row['round']))
    self._summary.flush()

  def close(self):
    self._summary.close()


def format_ranges(numbers):
  """`[1, 2, 3, 7]` -> `'1-3, 7'`."""
  spans = []
  for n in numbers:
    if spans and n == spans[-1][1] + 1:
      spans[-1][1] = n
    else:
      spans.append([n, n])
  return ', '.join(str(a) if a == b else f'{a}-{b}' for a, b in spans)


def _cell(value, column=None):
  """A CSV cell at full precision: integers as integers, floats round-trip exactly."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ''
  if column in INTEGER_COLUMNS:
    return int(value)
  if isinstance(value, float):
    return repr(value)
  return value


def _strict(value):
  """`value` with every non-finite float replaced by None (strict JSON has no NaN)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def write_summary(output_dir, summary):
  """Writes `summary.json` as strict JSON (a metric that does not apply is null, not NaN)."""
  path = os.path.join(output_dir, SUMMARY_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(_strict(summary), f, indent=1, sort_keys=True, allow_nan=False)
  os.replace(path + '.tmp', path)


def write_table(path, rows):
  """Writes `rows` (dicts with the same keys, in order) as the CSV file `path`, creating its
  folder: the small analysis tables behind docs/RESULTS.md."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def summarize(output_dir, run, counters, parameters, plain_parameters, worker_shares=()):
  """The run's summary (written to `summary.json` by `write_summary`), from its metrics file.

  Args:
    output_dir: the run folder.
    run: what the run is, `dict(parameterization=..., model=..., dataset=...)`.
    counters: bytes and wall time after the last round (`bytes_uploaded`,
      `bytes_downloaded`, `wall_time_s`).
    parameters, plain_parameters: the model's trainable parameters and its plain
      counterpart's.
    worker_shares: per remote worker, a JSON-ready dict of its share of the clients.
  """
  rows = read_metrics(output_dir)
  last = rows[-1] if rows else {}
  up, down = counters['bytes_uploaded'], counters['bytes_downloaded']
  return dict(
      **run, parameters=parameters, plain_parameters=plain_parameters,
      rounds=int(last.get('round', 0)), train_loss=last.get('train_loss', math.nan),
      test_accuracy=_last_value(rows, 'test_accuracy'),
      personalized_accuracy=_last_value(rows, 'personalized_accuracy'),
      gb_uploaded=up / 1e9, gb_downloaded=down / 1e9, gb_total=(up + down) / 1e9,
      wall_time_s=counters['wall_time_s'], output_dir=output_dir,
      worker_shares=list(worker_shares))


def _last_value(rows, key):
  values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
  return values[-1] if values else math.nan


def format_summaries(summaries):
  """The final table of one or more runs, as printed on stdout."""
  header = (f'{"run":<10} {"params":>11} {"rounds":>6} {"train loss":>10} {"test acc":>9} '
            f'{"pers. acc":>9} {"GB up":>9} {"GB down":>9} {"GB total":>9} {"time s":>8}')
  lines = [header, '-' * len(header)]
  for s in summaries:
    lines.append(
        f'{s["parameterization"]:<10} {s["parameters"]:>11,} {s["rounds"]:>6} '
        f'{s["train_loss"]:>10.4f} {_fmt(s["test_accuracy"]):>9} '
        f'{_fmt(s["personalized_accuracy"]):>9} {s["gb_uploaded"]:>9.4f} '
        f'{s["gb_downloaded"]:>9.4f} {s["gb_total"]:>9.4f} {s["wall_time_s"]:>8.1f}')
  return '\n'.join(lines)


def _fmt(value):
  return '-' if value is None or math.isnan(value) else f'{value:.4f}'
