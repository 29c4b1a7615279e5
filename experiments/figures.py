"""Figures this project writes: drawn by Agg into marked PNGs that never replace a user's file.

Shared by `experiments.plot`, `experiments.compare` and the analysis binaries (no flags, so that a
binary with flags of its own can draw). Matplotlib loads on the first figure, not on import.
"""

import os
import tempfile

from experiments import ownership
from experiments import run_io


def output_path(output):
  """The file a figure for `output` is written to: `DIR/accuracy_vs_gb.png` for an existing
  folder, `.png` appended when there is no extension (as matplotlib would), else `output`."""
  if os.path.isdir(output):
    return os.path.join(output, run_io.PLOT_FILE)
  if not os.path.splitext(output)[1]:
    return output + '.png'
  return output


def new_figure(**kwargs):
  """A matplotlib figure drawn by Agg, to files only: no pyplot, so the caller's matplotlib
  backend and open figures are left alone.

  Matplotlib loads here, on the first figure: the binaries answer `--help` without it
  (docs/DESIGN.md, "Fast start").
  """
  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib
  from matplotlib.backends import backend_agg
  # pylint: enable=g-import-not-at-top
  figure = figure_lib.Figure(**kwargs)
  backend_agg.FigureCanvasAgg(figure)
  return figure


def save_figure(figure, path, in_run_folder=False):
  """Writes `figure` as the PNG `path`, marked as ours in its metadata, so that `--overwrite`
  and `compare` can tell it from a file of the same name they did not write
  (`experiments.ownership.is_plot`).

  Atomically: the PNG is written to a temporary file beside `path`, then renamed over it, so a
  process killed while writing leaves the previous plot (or none), never a torn one that a
  resumed run would refuse as not its own. In a run folder the temporary file is `path.tmp`
  (a run's own, `experiments.ownership`); elsewhere a new uniquely named file, so that no
  existing file is replaced.
  """
  if in_run_folder:
    temporary = path + '.tmp'
  else:
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                         prefix='.' + os.path.basename(path) + '.',
                                         suffix='.tmp')
    os.close(handle)
  try:
    figure.savefig(temporary, format='png', metadata={'Software': ownership.MARK})
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def check_output(output, in_run_folder=False):
  """Refuses (ValueError, one line) to replace a file at `output_path(output)` that this
  program did not write (`experiments.ownership.is_plot`)."""
  path = output_path(output)
  if os.path.lexists(path) and not ownership.is_plot(path, in_run_folder):
    raise ValueError(f'{path} exists and is not a plot this program wrote; nothing was '
                     f'changed: move it or choose another output.')
