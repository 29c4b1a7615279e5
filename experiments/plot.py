r"""Accuracy against cumulative communication for several runs, in one PNG (the paper's Figure 3).

Each run folder's `metrics.csv` gives one curve: test accuracy (or, for the
personalised runs, personalised accuracy) at the evaluated rounds, against the
gigabytes sent up and down so far. The legend shows the run folder's name and
its parameterisation.

With `--y=aggregation_error`, each curve is instead the run's aggregation error (the share of
each round's kernel update that averaging the factors loses, mean over the kernels) by round.

  python -m experiments.plot --runs=runs/original,runs/fedpara --output=figure.png
"""

import math
import os

from absl import app
from absl import flags
import numpy

from experiments import figures
from experiments import flagfiles
from experiments import run_io

# The figure helpers, under the names callers and tests use.
output_path = figures.output_path
new_figure = figures.new_figure
save_figure = figures.save_figure
check_output = figures.check_output

_RUNS = flags.DEFINE_list('runs', None, 'Run output folders (comma-separated).')
_OUTPUT = flags.DEFINE_string('output', 'accuracy_vs_gb.png', 'PNG file to write.')
_TITLE = flags.DEFINE_string('title', None, 'Figure title (default: the dataset and model).')
_Y = flags.DEFINE_enum('y', 'accuracy', ['accuracy', 'aggregation_error'],
                       'accuracy: against cumulative GB (the default); aggregation_error: the '
                       'share of each round\'s kernel update that averaging the factors loses '
                       '(mean over the kernels), against the round.')


def _label(run_dir):
  run = run_io.read_run(run_dir)
  return f'{os.path.basename(os.path.normpath(run_dir))} ({run["parameterization"]})', run


def curve(rows):
  """`(gb, accuracy, metric name)` of the evaluated rounds of one run."""
  for key in ('test_accuracy', 'personalized_accuracy'):
    points = [(r['cumulative_gb'], r[key]) for r in rows if not math.isnan(r.get(key, math.nan))]
    if points:
      return [p[0] for p in points], [p[1] for p in points], key
  return [], [], None


def error_curve(rows):
  """`(rounds, aggregation error)` of the rounds that measured it (`aggregation_error_mean`:
  the mean over the factorised kernels, `fedpara_tff.aggregation_error`)."""
  points = [(r['round'], r['aggregation_error_mean']) for r in rows
            if not math.isnan(r.get('aggregation_error_mean', math.nan))]
  return [p[0] for p in points], [p[1] for p in points]


def format_gb_axis(axes):
  """Readable communication ticks: from 0, at most 6, short decimals, no offset or exponent.

  A single run's GB span a narrow range (one point: none), where matplotlib's default
  labels the ticks relative to an offset ('1e-3 + 1.2345e-4').
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  # loads with the figure
  axes.set_xlim(left=0, right=max(axes.get_xlim()[1], 1e-9))
  axes.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5, min_n_ticks=2))
  axes.xaxis.set_major_formatter(ticker.FuncFormatter(
      lambda value, _: numpy.format_float_positional(value, precision=6, trim='-')))


def plot_runs(run_dirs, output, title=None, in_run_folder=False, y='accuracy'):
  """Draws one curve per run into `output_path(output)`: accuracy against GB, or (`y=
  'aggregation_error'`) the aggregation error against the round; returns the curves drawn.
  Refuses to replace a file it did not write (`check_output`)."""
  check_output(output, in_run_folder)
  figure = new_figure(figsize=(6, 4), dpi=120)
  axes = figure.subplots()
  drawn, metrics, run = {}, set(), {}
  for run_dir in run_dirs:
    label, run = _label(run_dir)   # run_io.NoRunError (a ValueError) for a folder without a run
    rows = run_io.read_metrics(run_dir)
    if y == 'aggregation_error':
      xs, ys = error_curve(rows)
      metric = 'aggregation error (share of the kernel update)' if xs else None
    else:
      xs, ys, metric = curve(rows)
    if metric:
      axes.plot(xs, ys, marker='o', markersize=3, label=label)
      drawn[run_dir] = (xs, ys)
      metrics.add(metric)
  if y == 'aggregation_error':
    axes.set_xlabel('round')
  else:
    format_gb_axis(axes)
    axes.set_xlabel('cumulative communication, up + down (GB)')
  axes.set_ylabel(' / '.join(sorted(m.replace('_', ' ') for m in metrics)) or y)
  axes.set_title(title or f'{run.get("dataset", "")} {run.get("model", "")}'.strip())
  axes.grid(alpha=0.3)
  if drawn:
    axes.legend()
  figure.tight_layout()
  output = output_path(output)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  save_figure(figure, output, in_run_folder)
  return drawn


def main(argv):
  flagfiles.no_positional(argv, 'plot')
  if not _RUNS.value:
    raise app.UsageError('--runs names no run folder.')
  try:
    drawn = plot_runs(_RUNS.value, _OUTPUT.value, _TITLE.value, y=_Y.value)
  except ValueError as e:
    raise SystemExit(f'plot: error: {e}') from None
  print(f'wrote {output_path(_OUTPUT.value)} ({len(drawn)} curves)')


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main)


if __name__ == '__main__':
  entry_point()
