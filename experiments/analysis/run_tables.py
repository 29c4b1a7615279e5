"""Rows of run tables: one run at a round, a group of seeds, the cells of the step-size sweep.

The library behind `experiments.analysis.results_table` and `experiments.analysis.sweep_table` (no flags, so that
tests and other tools can import it).
"""

import math
import os
import re
import statistics

from experiments import run_io


def first_reaching_in(rows, target):
  """`(round, cumulative GB)` of the first of `rows` (of `metrics.csv`) evaluated at test accuracy
  >= `target`, or None."""
  for r in rows:
    if not math.isnan(r['test_accuracy']) and r['test_accuracy'] >= target:
      return int(r['round']), r['cumulative_gb']
  return None


def first_reaching(run_dir, target):
  """`(round, cumulative GB)` of the run's first evaluation with test accuracy >= `target`, or
  None."""
  return first_reaching_in(run_io.read_metrics(run_dir), target)


def mean_aggregation_error(rows):
  """The aggregation error (mean over the kernels) averaged over `rows`' rounds that measured it;
  NaN when none did."""
  errors = [r.get('aggregation_error_mean', math.nan) for r in rows]
  errors = [e for e in errors if not math.isnan(e)]
  return statistics.fmean(errors) if errors else math.nan


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
              gb=last['cumulative_gb'], seconds=last['wall_time_s'],
              aggregation_error=mean_aggregation_error(rows))


def seed_group_name(folder):
  """The name a run folder's seeds share: `NAME` for `NAME` and `NAME_seed<N>`."""
  return re.sub(r'_seed\d+$', '', os.path.basename(os.path.normpath(folder)))


def seed_groups(folders):
  """`{name: [folders]}`: `NAME` and `NAME_seed<N>` under `NAME`, in first-seen order.

  Raises:
    ValueError: two runs of one name differ in a flag other than the seed (and the checksum of
      pretrained weights, which a seed may pretrain itself), or share a seed.
  """
  groups = {}
  for folder in folders:
    groups.setdefault(seed_group_name(folder), []).append(folder)
  for name, members in groups.items():
    runs = [run_io.read_run(m) for m in members]
    seeds = [r.get('seed') for r in runs]
    if len(set(seeds)) != len(seeds):
      raise ValueError(f'{name}: runs {members} share a seed ({seeds}).')
    # A seed may pretrain its own weights (scripts/finetune.sh): their checksum goes with it.
    ignore = {'seed', 'output_dir', 'pretrained_sha256'}
    first = {k: v for k, v in runs[0].items() if k not in ignore}
    for member, run in zip(members[1:], runs[1:]):
      other = {k: v for k, v in run.items() if k not in ignore}
      differing = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
      if differing:
        raise ValueError(f'{name}: {member} differs from {members[0]} in {differing}, not '
                         f'only in the seed.')
  return groups


def _mean_std(values):
  """(mean, sample std); the std of one value is NaN (undefined, not 0); both NaN when a value
  is NaN (e.g. an aggregation error a run did not measure)."""
  if any(math.isnan(v) for v in values):
    return math.nan, math.nan
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else math.nan
  return mean, std


def seed_row(folders, round_num):
  """The mean +- std row of one group of seeds at `round_num`."""
  rows = [row_at(f, round_num) for f in folders]
  stats = {key: _mean_std([r[key] for r in rows])
           for key in ('train_loss', 'test_accuracy', 'best_accuracy', 'gb', 'seconds',
                       'aggregation_error')}
  return dict(seeds=len(rows), round=rows[0]['round'], **stats)


CELL = re.compile(r'^(?P<model>.+)_(?P<optimizer>sgd|adam)(?P<lr>[0-9.e-]+)$')
DIVERGED_NOTE = '.diverged.txt'


def read_cell(setting_dir, name, chance):
  """`(accuracy or nan, diverged)` of one cell; None when it has not run to its end."""
  folder = os.path.join(setting_dir, name)
  if os.path.exists(folder + DIVERGED_NOTE):
    return math.nan, True
  summary = os.path.join(folder, run_io.SUMMARY_FILE)
  if not os.path.exists(summary):
    return None
  accuracies = [r['test_accuracy'] for r in run_io.read_metrics(folder)
                if not math.isnan(r['test_accuracy'])]
  accuracy = accuracies[-1] if accuracies else math.nan
  return accuracy, not accuracy > chance


def read_setting(setting_dir, chance):
  """`{(model, optimizer, lr): (accuracy, diverged)}` for every finished cell of one setting."""
  cells = {}
  for entry in sorted(os.listdir(setting_dir)):
    name = entry[:-len(DIVERGED_NOTE)] if entry.endswith(DIVERGED_NOTE) else entry
    match = CELL.match(name)
    if not match or not (os.path.isdir(os.path.join(setting_dir, name))
                         or entry.endswith(DIVERGED_NOTE)):
      continue
    result = read_cell(setting_dir, name, chance)
    if result is not None:
      cells[match['model'], match['optimizer'], float(match['lr'])] = result
  return cells


def _columns(cells):
  order = {'sgd': 0, 'adam': 1}
  return sorted({(o, lr) for _, o, lr in cells}, key=lambda c: (order[c[0]], c[1]))


def _models(cells):
  return sorted({m for m, _, _ in cells}, key=lambda m: (m.split('_')[0] != 'original', m))


def table_lines(cells):
  """The markdown table of one setting: final accuracy or `div` per model and column."""
  columns = _columns(cells)
  lines = ['| model | ' + ' | '.join(f'{o} {lr:g}' for o, lr in columns) + ' |',
           '|---|' + '---:|' * len(columns)]
  for model in _models(cells):
    values = []
    for optimizer, lr in columns:
      result = cells.get((model, optimizer, lr))
      values.append('n/a' if result is None else 'div' if result[1] else f'{result[0]:.4f}')
    lines.append(f'| {model} | ' + ' | '.join(values) + ' |')
  return lines


def summary_lines(cells):
  """Per model: its best learning rate per optimizer, its divergences, and how many of them are
  at a learning rate where the original model trained."""
  lines = ['| model | best sgd lr (acc) | best adam lr (acc) | diverged | of which the original '
           'trained |', '|---|---|---|---:|---:|']
  for model in _models(cells):
    best = {}
    for optimizer in ('sgd', 'adam'):
      done = [(acc, lr) for (m, o, lr), (acc, div) in cells.items()
              if m == model and o == optimizer and not div]
      best[optimizer] = f'{max(done)[1]:g} ({max(done)[0]:.4f})' if done else '-'
    diverged = [(o, lr) for (m, o, lr), (_, div) in cells.items() if m == model and div]
    original_trained = [c for c in diverged if cells.get(('original',) + c, (0, True))[1] is False]
    lines.append(f'| {model} | {best["sgd"]} | {best["adam"]} | {len(diverged)} | '
                 f'{len(original_trained)} |')
  return lines
