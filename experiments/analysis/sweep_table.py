r"""Tables of the step-size sweep (`scripts/stepsize_sweep.sh`): accuracy per cell, divergences.

Reads `<sweep_dir>/<setting>/<cell>` run folders (not the `<setting>_r<N>` folders of longer
runs), cells named
`<model>_<optimizer><lr>` (e.g. `fedpara_safe_sgd0.1`), and prints for each setting one markdown
table, a row per model and a column per optimizer and learning rate, each cell the final test
accuracy or `div` (the run stopped on a non-finite loss: `<cell>.diverged.txt` beside it, or its
final accuracy is at most `--chance`), then per model its best learning rate per optimizer and the
number of divergences, and how many of those happened where the original model trained.
`--save_to` copies each run's `metrics.csv`, `run.json` and divergence note there.

  python -m experiments.analysis.sweep_table --sweep_dir=runs/stepsize_sweep
"""

import collections
import os
import re
import shutil

from absl import app
from absl import flags

from experiments import flagfiles
from experiments import run_io
from experiments.analysis import run_tables

_SWEEP_DIR = flags.DEFINE_string('sweep_dir', 'runs/stepsize_sweep', 'Folder of the sweep.')
_CHANCE = flags.DEFINE_float('chance', 0.2, 'A final accuracy at most this counts as diverged.')
_SAVE_TO = flags.DEFINE_string('save_to', None, 'Folder to copy the small files of each run to.')

def _copy(setting_dir, destination):
  os.makedirs(destination, exist_ok=True)
  for entry in sorted(os.listdir(setting_dir)):
    source = os.path.join(setting_dir, entry)
    if entry.endswith(run_tables.DIVERGED_NOTE):
      shutil.copy(source, os.path.join(destination, entry))
    elif os.path.isdir(source) and run_tables.CELL.match(entry):
      for name in (run_io.METRICS_FILE, run_io.RUN_FILE):
        if os.path.exists(os.path.join(source, name)):
          shutil.copy(os.path.join(source, name), os.path.join(destination, f'{entry}.{name}'))


def main(argv):
  flagfiles.no_positional(argv, 'sweep_table')
  if not os.path.isdir(_SWEEP_DIR.value):
    raise app.UsageError(f'--sweep_dir={_SWEEP_DIR.value} is not a folder.')
  # `<setting>_r<N>` folders hold the longer, seeded runs (experiments.analysis.results_table --seeds).
  settings = sorted(e for e in os.listdir(_SWEEP_DIR.value)
                    if os.path.isdir(os.path.join(_SWEEP_DIR.value, e))
                    and not re.search(r'_r\d+$', e))
  counts = collections.Counter()
  for setting in settings:
    setting_dir = os.path.join(_SWEEP_DIR.value, setting)
    cells = run_tables.read_setting(setting_dir, _CHANCE.value)
    if not cells:
      continue
    print(f'\n{setting}: final test accuracy (div: diverged)\n')
    print('\n'.join(run_tables.table_lines(cells)))
    print()
    print('\n'.join(run_tables.summary_lines(cells)))
    counts.update(m for (m, _, _), (_, div) in cells.items() if div)
    if _SAVE_TO.value:
      _copy(setting_dir, os.path.join(_SAVE_TO.value, setting))
  print(f'\ndivergences over every setting: {dict(sorted(counts.items())) or "none"}')


if __name__ == '__main__':
  flagfiles.run_main(main)
