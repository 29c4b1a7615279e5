r"""A markdown table of several runs at one round: accuracy, parameters, bytes, wall time.

Reads each run folder's `run.json` and `metrics.csv` (as `experiments.train`
writes them) and prints one row per run at `--round` (default: the last round
all runs evaluated), with the train loss there, the best test accuracy up to
it, the aggregation error (the share of each round's kernel update that averaging the factors
loses, mean over the kernels and over the rounds up to there; "-" for a run without factorised
kernels or written before it was measured), gigabytes sent up and down, and seconds; with `--target`, also the first
evaluated round whose test accuracy reaches it and the gigabytes sent by then
("-" if never). `--copy_to` also copies each run's
`metrics.csv` and `run.json` there (`<run>.metrics.csv`, `<run>.run.json`), the
small files that back a table in docs/RESULTS.md.

With `--seeds`, runs named `NAME` (seed 0 of the paper-claim scripts) and
`NAME_seed<N>` are one row: the number of seeds and the mean +- sample standard
deviation of the train loss and the test accuracy (its last and best value), with the
mean gigabytes and seconds (a row of one seed: its values, without a spread). The runs of a row
must differ in nothing but the seed.

  python -m experiments.analysis.results_table --runs=runs/paper_claim/fashion_vgg_narrow_iid/*
"""

import glob
import math
import os
import shutil

from absl import app
from absl import flags

from experiments import flagfiles
from experiments import run_io
from experiments.analysis import run_tables

_RUNS = flags.DEFINE_list('runs', None, 'Run folders (comma-separated; shell globs allowed).')
_ROUND = flags.DEFINE_integer('round', 0, 'Round to report (0: the last one every run evaluated).')
_COPY_TO = flags.DEFINE_string('copy_to', None, 'Folder to copy each run\'s metrics and flags to.')
_TARGET = flags.DEFINE_float('target', None, 'Test accuracy to report the first round reaching.')
_SEEDS = flags.DEFINE_bool(
    'seeds', False,
    'One row per NAME over the runs NAME and NAME_seed<N>: mean +- std (one seed: its value).')
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


def _error_cell(value):
  return '-' if math.isnan(value) else f'{value:.4f}'


def _print_seed_table(groups, round_num):
  print('| run | seeds | round | train loss | test accuracy | best so far | agg. error | '
        'GB up+down | wall s |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  # One seed has no spread: its value alone.
  pm = lambda pair: (_error_cell(pair[0]) if math.isnan(pair[1])
                     else f'{pair[0]:.4f} +- {pair[1]:.4f}')
  for name, folders in groups.items():
    r = run_tables.seed_row(folders, round_num)
    print(f'| {name} | {r["seeds"]} | {r["round"]} | {pm(r["train_loss"])} | '
          f'{pm(r["test_accuracy"])} | {pm(r["best_accuracy"])} | '
          f'{pm(r["aggregation_error"])} | {r["gb"][0]:.4f} | {r["seconds"][0]:.0f} |')


def main(argv):
  flagfiles.no_positional(argv, 'results_table')
  folders = _expand(_RUNS.value)
  common = set.intersection(*[_evaluated_rounds(run_io.read_metrics(d)) for d in folders])
  round_num = _ROUND.value or (max(common) if common else 0)
  if round_num not in common:
    raise app.UsageError(f'--round={round_num} is not evaluated in every run; common evaluated '
                         f'rounds: {sorted(common)}')
  if _SEEDS.value:
    if _TARGET.value:
      raise app.UsageError('--target reports one run\'s rounds; it does not combine with --seeds.')
    try:
      groups = run_tables.seed_groups(folders)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    _print_seed_table(groups, round_num)
    _copy(folders)
    return
  target = _TARGET.value
  reach = f' rounds to {target:g} | GB to {target:g} |' if target else ''
  print(f'| run | round | train loss | test accuracy | best so far | agg. error | GB up+down | '
        f'wall s |{reach}')
  print('|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if target else ''))
  for folder in folders:
    r = run_tables.row_at(folder, round_num)
    cells = ''
    if target:
      reached = run_tables.first_reaching(folder, target)
      cells = f' {reached[0]} | {reached[1]:.4f} |' if reached else ' - | - |'
    print(f'| {r["run"]} | {r["round"]} | {r["train_loss"]:.4f} | {r["test_accuracy"]:.4f} | '
          f'{r["best_accuracy"]:.4f} | {_error_cell(r["aggregation_error"])} | {r["gb"]:.4f} | '
          f'{r["seconds"]:.0f} |{cells}')
  _copy(folders)


def _copy(folders):
  """With `--copy_to`, each run's `metrics.csv` and `run.json` as `<run>.metrics.csv` etc."""
  if not _COPY_TO.value:
    return
  os.makedirs(_COPY_TO.value, exist_ok=True)
  for folder in folders:
    name = os.path.basename(os.path.normpath(folder))
    for source, suffix in ((run_io.METRICS_FILE, 'metrics.csv'), (run_io.RUN_FILE, 'run.json')):
      shutil.copy(os.path.join(folder, source), os.path.join(_COPY_TO.value, f'{name}.{suffix}'))


if __name__ == '__main__':
  flags.mark_flag_as_required('runs')
  flagfiles.run_main(main)
