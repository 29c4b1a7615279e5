r"""A markdown table of several runs at one round: accuracy, parameters, bytes, wall time.

Reads each run folder's `run.json` and `metrics.csv` (as `experiments.train`
writes them) and prints one row per run at `--round` (default: the last round
all runs evaluated), with the train loss there, the best test accuracy up to
it, gigabytes sent up and down, and seconds; with `--target`, also the first
evaluated round whose test accuracy reaches it and the gigabytes sent by then
("-" if never). `--copy_to` also copies each run's
`metrics.csv` and `run.json` there (`<run>.metrics.csv`, `<run>.run.json`), the
small files that back a table in docs/RESULTS.md.

With `--seeds`, runs named `NAME` (seed 0 of the paper-claim scripts) and
`NAME_seed<N>` are one row: the number of seeds and the mean +- sample standard
deviation of the train loss and the test accuracy (its last and best value), with the
mean gigabytes and seconds. The runs of a row must differ in nothing but the seed.

  python -m experiments.results_table --runs=runs/paper_claim/fashion_vgg_narrow_iid/*
"""

import glob
import math
import os
import re
import shutil
import statistics

from absl import app
from absl import flags

from experiments import run_io

_RUNS = flags.DEFINE_list('runs', None, 'Run folders (comma-separated; shell globs allowed).')
_ROUND = flags.DEFINE_integer('round', 0, 'Round to report (0: the last one every run evaluated).')
_COPY_TO = flags.DEFINE_string('copy_to', None, 'Folder to copy each run\'s metrics and flags to.')
_TARGET = flags.DEFINE_float('target', None, 'Test accuracy to report the first round reaching.')
_SEEDS = flags.DEFINE_bool('seeds', False,
                           'One row per NAME over the runs NAME and NAME_seed<N>: mean +- std.')
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


def seed_groups(folders):
  """`{name: [folders]}`: `NAME` and `NAME_seed<N>` under `NAME`, in first-seen order.

  Raises:
    ValueError: two runs of one name differ in a flag other than the seed, or share a seed.
  """
  groups = {}
  for folder in folders:
    name = re.sub(r'_seed\d+$', '', os.path.basename(os.path.normpath(folder)))
    groups.setdefault(name, []).append(folder)
  for name, members in groups.items():
    runs = [run_io.read_run(m) for m in members]
    seeds = [r.get('seed') for r in runs]
    if len(set(seeds)) != len(seeds):
      raise ValueError(f'{name}: runs {members} share a seed ({seeds}).')
    ignore = {'seed', 'output_dir'}
    first = {k: v for k, v in runs[0].items() if k not in ignore}
    for member, run in zip(members[1:], runs[1:]):
      other = {k: v for k, v in run.items() if k not in ignore}
      differing = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
      if differing:
        raise ValueError(f'{name}: {member} differs from {members[0]} in {differing}, not '
                         f'only in the seed.')
  return groups


def _mean_std(values):
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return mean, std


def seed_row(folders, round_num):
  """The mean +- std row of one group of seeds at `round_num`."""
  rows = [row_at(f, round_num) for f in folders]
  stats = {key: _mean_std([r[key] for r in rows])
           for key in ('train_loss', 'test_accuracy', 'best_accuracy', 'gb', 'seconds')}
  return dict(seeds=len(rows), round=rows[0]['round'], **stats)


def _print_seed_table(groups, round_num):
  print('| run | seeds | round | train loss | test accuracy | best so far | GB up+down | wall s |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  pm = lambda pair: f'{pair[0]:.4f} +- {pair[1]:.4f}'
  for name, folders in groups.items():
    r = seed_row(folders, round_num)
    print(f'| {name} | {r["seeds"]} | {r["round"]} | {pm(r["train_loss"])} | '
          f'{pm(r["test_accuracy"])} | {pm(r["best_accuracy"])} | {r["gb"][0]:.4f} | '
          f'{r["seconds"][0]:.0f} |')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
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
      groups = seed_groups(folders)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    _print_seed_table(groups, round_num)
    _copy(folders)
    return
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
  app.run(main)
