r"""The aggregation error's course over rounds, mean +- std over seeds, as a markdown table.

Reads each run folder's `metrics.csv` (`aggregation_error_mean`: the share of the round's
averaged kernel update that averaging the factors loses, mean over the factorised kernels;
`aggregation_error_max`: the largest kernel's) and prints, per group of seeds (`NAME` and
`NAME_seed<N>`, as `results_table --seeds` groups them), the mean over the kernels at each of
`--rounds` and the largest kernel's at the last of them, each as mean +- sample std over the
seeds; with `--copy_to`, each run's `metrics.csv` and `run.json` are copied there.

One setting at a time: runs of one name in two settings' folders are refused (they differ in
more than the seed).

  python -m experiments.analysis.error_course --runs='runs/aggregation/fashion_cnn_iid/*'
"""

import glob
import math
import os
import shutil
import statistics

from absl import app
from absl import flags

from experiments import flagfiles
from experiments import run_io
from experiments.analysis import run_tables

_RUNS = flags.DEFINE_list('runs', None, 'Run folders (comma-separated; shell globs allowed).')
_ROUNDS = flags.DEFINE_list('rounds', ['1', '10', '20', '40'], 'Rounds to report.')
_COPY_TO = flags.DEFINE_string('copy_to', None, 'Folder to copy each run\'s metrics and flags to.')


def error_at(run_dir, round_num, column='aggregation_error_mean'):
  """The run's `column` at `round_num` (NaN when the run did not reach or measure it)."""
  for row in run_io.read_metrics(run_dir):
    if int(row['round']) == round_num:
      return row.get(column, math.nan)
  return math.nan


def mean_std(values):
  """`mean +- std` over the values, NaN-free ones only, with how many there were."""
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.4f} (1 seed)'
  spread = f'{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}'
  return spread if len(values) == 3 else f'{spread} ({len(values)} seeds)'


def main(argv):
  flagfiles.no_positional(argv, 'error_course')
  folders = [m for pattern in _RUNS.value for m in sorted(glob.glob(pattern)) or [pattern]
             if os.path.isdir(m)]
  if not folders:
    raise app.UsageError(f'--runs matched no run folder: {_RUNS.value}')
  rounds = [int(r) for r in _ROUNDS.value]
  try:
    groups = run_tables.seed_groups(folders)
  except ValueError as e:   # two runs of a name differ in more than the seed
    raise app.UsageError(str(e)) from None
  print('| run | ' + ' | '.join(f'round {r}' for r in rounds) + f' | largest kernel, round '
        f'{rounds[-1]} |')
  print('|---|' + '---:|' * (len(rounds) + 1))
  for name, members in groups.items():
    cells = [mean_std([error_at(m, r) for m in members]) for r in rounds]
    cells.append(mean_std([error_at(m, rounds[-1], 'aggregation_error_max') for m in members]))
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
  if _COPY_TO.value:
    os.makedirs(_COPY_TO.value, exist_ok=True)
    for folder in folders:
      name = os.path.basename(os.path.normpath(folder))
      for source, suffix in ((run_io.METRICS_FILE, 'metrics.csv'), (run_io.RUN_FILE, 'run.json')):
        shutil.copy(os.path.join(folder, source), os.path.join(_COPY_TO.value,
                                                               f'{name}.{suffix}'))


if __name__ == '__main__':
  flagfiles.run_main(main)
