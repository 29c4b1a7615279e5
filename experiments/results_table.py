r"""A markdown table of several runs at one round: accuracy, parameters, bytes, wall time.

Reads each run folder's `run.json` and `metrics.csv` (as `experiments.train`
writes them) and prints one row per run at `--round` (default: the last round
all runs evaluated), with the train loss there, the best test accuracy up to
it, gigabytes sent up and down, and seconds; with `--target`, also the first
evaluated round whose test accuracy reaches it and the gigabytes sent by then
("-" if never). `--copy_to` also copies each run's
`metrics.csv` and `run.json` there (`<run>.metrics.csv`, `<run>.run.json`), the
small files that back a table in docs/RESULTS.md.

  python -m experiments.results_table --runs=runs/paper_claim/fashion_vgg_narrow_iid/*
"""

import glob
import math
import os
import shutil

from absl import app
from absl import flags

from experiments import run_io

_RUNS = flags.DEFINE_list('runs', None, 'Run folders (comma-separated; shell globs allowed).')
_ROUND = flags.DEFINE_integer('round', 0, 'Round to report (0: the last one every run evaluated).')
_COPY_TO = flags.DEFINE_string('copy_to', None, 'Folder to copy each run\'s metrics and flags to.')
_TARGET = flags.DEFINE_float('target', None, 'Test accuracy to report the first round reaching.')
flags.register_validator('target', lambda v: v is None or 0 < v <= 1,
                         message='--target must be an accuracy in (0, 1].')


def _expand(patterns):
  folders = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern)) or [pattern]
    folders += [m for m in matches if os.path.isdir(m)]
  if not folders:
    raise app.UsageError(f'--runs matched no run folder: {patterns}')
  return folders


def _evaluated_rounds(rows):
  return {int(r['round']) for r in rows if not math.isnan(r['test_accuracy'])}


def first_reaching(run_dir, target):
  """`(round, cumulative GB)` of the first evaluation with test accuracy >= `target`, or None."""
  for r in run_io.read_metrics(run_dir):
    if not math.isnan(r['test_accuracy']) and r['test_accuracy'] >= target:
      return int(r['round']), r['cumulative_gb']
  return None


def row_at(run_dir, round_num):
  """The table row of one run at `round_num`."""
  rows = [r for r in run_io.read_metrics(run_dir) if int(r['round']) <= round_num]
  flags_ = run_io.read_run(run_dir)
  last = rows[-1]
  evaluated = [r for r in rows if not math.isnan(r['test_accuracy'])]
  return dict(run=os.path.basename(os.path.normpath(run_dir)),
              parameterization=flags_['parameterization'], round=int(last['round']),
              train_loss=last['train_loss'], test_accuracy=evaluated[-1]['test_accuracy'],
              best_accuracy=max(r['test_accuracy'] for r in evaluated),
              gb=last['cumulative_gb'], seconds=last['wall_time_s'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
  folders = _expand(_RUNS.value)
  common = set.intersection(*[_evaluated_rounds(run_io.read_metrics(d)) for d in folders])
  round_num = _ROUND.value or (max(common) if common else 0)
  if round_num not in common:
    raise app.UsageError(f'--round={round_num} is not evaluated in every run; common evaluated '
                         f'rounds: {sorted(common)}')
  target = _TARGET.value
  reach = f' rounds to {target:g} | GB to {target:g} |' if target else ''
  print(f'| run | round | train loss | test accuracy | best so far | GB up+down | wall s |{reach}')
  print('|---|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if target else ''))
  for folder in folders:
    r = row_at(folder, round_num)
    cells = ''
    if target:
      reached = first_reaching(folder, target)
      cells = f' {reached[0]} | {reached[1]:.4f} |' if reached else ' - | - |'
    print(f'| {r["run"]} | {r["round"]} | {r["train_loss"]:.4f} | {r["test_accuracy"]:.4f} | '
          f'{r["best_accuracy"]:.4f} | {r["gb"]:.4f} | {r["seconds"]:.0f} |{cells}')
    if _COPY_TO.value:
      os.makedirs(_COPY_TO.value, exist_ok=True)
      name = os.path.basename(os.path.normpath(folder))
      for source, suffix in ((run_io.METRICS_FILE, 'metrics.csv'), (run_io.RUN_FILE, 'run.json')):
        shutil.copy(os.path.join(folder, source), os.path.join(_COPY_TO.value, f'{name}.{suffix}'))


if __name__ == '__main__':
  flags.mark_flag_as_required('runs')
  app.run(main)
