r"""The capacity map: FedPara minus the same-size low-rank model, by parameter budget and setting.

Reads the run folders `scripts/capacity_map.sh` writes (`fedpara_<budget>`, `lowrank_<budget>`,
`original`, each with optional `_seed<N>`) and prints, per setting and budget, both models'
parameters and shares of the original's, their test accuracy at `--round` (mean +- sample std over
the seeds that reached it), the paired difference FedPara - low-rank in points (over the seeds both
finished), each model's aggregation error (mean over kernels and rounds) and the GB it sent before
first reaching `--target_share` of the original's mean accuracy (mean over the seeds that did);
the original's accuracy and GB close each table. Runs that did not reach `--round` (running, stopped or diverged) are
named. `--figure` draws the difference with its std against FedPara's share, one line per setting,
beside the accuracies with the original's as a dashed line; `--copy_to` copies every finished run's
`metrics.csv` and `run.json`.

  python -m experiments.analysis.capacity_map \
      --settings='IID=runs/capacity_map/fashion_cnn_iid,Dirichlet(0.3)=runs/capacity_map/fashion_cnn_dir0.3' \
      --figure=docs/results/capacity_map/capacity_map.png
"""

import math
import os
import shutil

from absl import flags

from experiments import figures
from experiments import flagfiles
from experiments import run_io
from experiments.analysis import capacity_points

_SETTINGS = flags.DEFINE_list(
    'settings', ['IID=runs/capacity_map/fashion_cnn_iid',
                 'Dirichlet(0.3)=runs/capacity_map/fashion_cnn_dir0.3'],
    'LABEL=FOLDER per setting (comma-separated).')
_ROUND = flags.DEFINE_integer('round', 40, 'Round at which to compare (an evaluated round).',
                              lower_bound=1)
_FIGURE = flags.DEFINE_string('figure', None, 'PNG file to draw the map into (optional).')
_TARGET = flags.DEFINE_float(
    'target_share', 0.95, 'Also report the GB each model sent before its first evaluation at or '
    'above this share of the original\'s mean accuracy in the setting (0: leave it out).',
    lower_bound=0.0, upper_bound=1.0)
_COPY_TO = flags.DEFINE_string('copy_to', None,
                               'Folder to copy each finished run\'s metrics and flags to, one '
                               'subfolder per setting folder.')


def parse_settings(entries):
  """`['IID=runs/x', ...]` -> `[('IID', 'runs/x'), ...]`; ValueError naming a bad entry."""
  settings = []
  for entry in entries:
    label, sep, folder = entry.partition('=')
    if not sep or not label or not folder:
      raise ValueError(f'--settings entry {entry!r} is not LABEL=FOLDER.')
    if not os.path.isdir(folder):
      raise ValueError(f'--settings entry {entry!r}: {folder} is not a folder.')
    settings.append((label, folder))
  return settings


def draw(maps, path):
  """Two panels: the paired difference (points) with its std, and both models' accuracies with
  the original's, against FedPara's share of the original's parameters (log scale)."""
  figure = figures.new_figure(figsize=(11, 4.2), dpi=120)
  left, right = figure.subplots(1, 2)
  for index, (label, points, original) in enumerate(maps):
    color = f'C{index}'
    shares = [100 * p['fedpara_share'] for p in points]
    diffs = [100 * p['difference'][0] for p in points]
    spread = [0 if math.isnan(p['difference'][1]) else 100 * p['difference'][1] for p in points]
    left.errorbar(shares, diffs, yerr=spread, marker='o', capsize=3, color=color, label=label)
    for model, style in (('fedpara', '-o'), ('lowrank', '--s')):
      right.errorbar(shares, [p[model][0] for p in points],
                     yerr=[0 if math.isnan(p[model][1]) else p[model][1] for p in points],
                     fmt=style, capsize=3, color=color, markersize=4,
                     label=f'{label}: {"FedPara" if model == "fedpara" else "low-rank"}')
    if original[2]:
      right.axhline(original[0], color=color, linestyle=':', label=f'{label}: original')
  left.axhline(0, color='black', linewidth=0.8)
  left.set_ylabel('FedPara - low-rank (accuracy points)')
  left.set_title('paired difference, mean +- std over seeds', fontsize=9)
  right.set_ylabel('test accuracy')
  right.set_title('accuracy, mean +- std over seeds', fontsize=9)
  shares = sorted({round(100 * p['fedpara_share'], 1) for _, points, _ in maps for p in points})
  for axes in (left, right):
    axes.set_xscale('log')
    axes.set_xticks(shares)
    axes.set_xticklabels([f'{s:g}' for s in shares])
    axes.minorticks_off()
    axes.set_xlabel('parameters, % of the original')
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
  figure.tight_layout()
  figures.save_figure(figure, path)


def copy_runs(setting_dir, copy_to):
  """Copies each finished run's `metrics.csv` and `run.json` to `copy_to/<setting folder>/`."""
  target = os.path.join(copy_to, os.path.basename(os.path.normpath(setting_dir)))
  os.makedirs(target, exist_ok=True)
  for entry in sorted(os.listdir(setting_dir)):
    folder = os.path.join(setting_dir, entry)
    if capacity_points.NAME.match(entry) and os.path.exists(
        os.path.join(folder, run_io.SUMMARY_FILE)):
      for source, suffix in ((run_io.METRICS_FILE, 'metrics.csv'), (run_io.RUN_FILE, 'run.json')):
        shutil.copy(os.path.join(folder, source), os.path.join(target, f'{entry}.{suffix}'))


def main(argv):
  flagfiles.no_positional(argv, 'capacity_map')
  try:
    settings = parse_settings(_SETTINGS.value)
    if _FIGURE.value:
      figures.check_output(_FIGURE.value)
  except ValueError as e:
    raise SystemExit(f'capacity_map: error: {e}') from None
  maps = []
  for label, folder in settings:
    runs, unfinished = capacity_points.read_runs(folder, _ROUND.value)
    original = capacity_points.original_point(runs)
    target = (_TARGET.value * original[0] if _TARGET.value and original[2] else None)
    points = capacity_points.budget_points(runs, target)
    print(f'\n{label} ({folder}), round {_ROUND.value}'
          + (f'; target {target:.4f} ({_TARGET.value:g} of the original\'s mean)' if target
             else '') + ':\n')
    print('\n'.join(capacity_points.table_lines(
        points, original, capacity_points.original_gb_to(runs, target) if target else None)))
    if unfinished:
      print(f'\nnot at round {_ROUND.value} (running, stopped or diverged): '
            f'{", ".join(unfinished)}')
    maps.append((label, points, original))
    if _COPY_TO.value:
      copy_runs(folder, _COPY_TO.value)
  if _FIGURE.value and not any(points for _, points, _ in maps):
    raise SystemExit(f'capacity_map: error: no budget has both models at round {_ROUND.value} '
                     f'yet, so there is nothing to draw; {_FIGURE.value} was not written.')
  if _FIGURE.value:
    path = figures.output_path(_FIGURE.value)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    draw(maps, path)
    print(f'\nwrote {path}')


if __name__ == '__main__':
  flagfiles.run_main(main)
