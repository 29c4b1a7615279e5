r"""Tables of the step-size sweep (`scripts/stepsize_sweep.sh`): accuracy per cell, divergences.

Reads `<sweep_dir>/<setting>/<cell>` run folders (not the `<setting>_r<N>` folders of longer
runs), cells named
`<model>_<optimizer><lr>` (e.g. `fedpara_safe_sgd0.1`), and prints for each setting one markdown
table, a row per model and a column per optimizer and learning rate, each cell the final test
accuracy or `div` (the run stopped on a non-finite loss: `<cell>.diverged.txt` beside it, or its
final accuracy is at most `--chance`), then per model its best learning rate per optimizer and the
number of divergences, and how many of those happened where the original model trained.
`--save_to` copies each run's `metrics.csv`, `run.json` and divergence note there.

  python -m experiments.sweep_table --sweep_dir=runs/stepsize_sweep
"""

import collections
import math
import os
import re
import shutil

from absl import app
from absl import flags

from experiments import run_io

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', 'runs/stepsize_sweep', 'Folder of the sweep.')
_CHANCE = flags.DEFINE_float('chance', 0.2, 'A final accuracy at most this counts as diverged.')
_SAVE_TO = flags.DEFINE_string('save_to', None, 'Folder to copy the small files of each run to.')

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


def _copy(setting_dir, destination):
  os.makedirs(destination, exist_ok=True)
  for entry in sorted(os.listdir(setting_dir)):
    source = os.path.join(setting_dir, entry)
    if entry.endswith(DIVERGED_NOTE):
      shutil.copy(source, os.path.join(destination, entry))
    elif os.path.isdir(source) and CELL.match(entry):
      for name in (run_io.METRICS_FILE, run_io.RUN_FILE):
        if os.path.exists(os.path.join(source, name)):
          shutil.copy(os.path.join(source, name), os.path.join(destination, f'{entry}.{name}'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments: {argv[1:]}')
  if not os.path.isdir(_SWEEP_DIR.value):
    raise app.UsageError(f'--sweep_dir={_SWEEP_DIR.value} is not a folder.')
  # `<setting>_r<N>` folders hold the longer, seeded runs (experiments.results_table --seeds).
  settings = sorted(e for e in os.listdir(_SWEEP_DIR.value)
                    if os.path.isdir(os.path.join(_SWEEP_DIR.value, e))
                    and not re.search(r'_r\d+$', e))
  counts = collections.Counter()
  for setting in settings:
    setting_dir = os.path.join(_SWEEP_DIR.value, setting)
    cells = read_setting(setting_dir, _CHANCE.value)
    if not cells:
      continue
    print(f'\n{setting}: final test accuracy (div: diverged)\n')
    print('\n'.join(table_lines(cells)))
    print()
    print('\n'.join(summary_lines(cells)))
    counts.update(m for (m, _, _), (_, div) in cells.items() if div)
    if _SAVE_TO.value:
      _copy(setting_dir, os.path.join(_SAVE_TO.value, setting))
  print(f'\ndivergences over every setting: {dict(sorted(counts.items())) or "none"}')


if __name__ == '__main__':
  app.run(main)
