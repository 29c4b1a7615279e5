r"""Runs the same federated experiment once per parameterisation and compares them.

The README's main job: the original model, the same-size low-rank model and
FedPara on the same real data and seed, then one table with final accuracy and
gigabytes of each run, each run against the first, and one accuracy-vs-GB plot
of all runs. Every flag of `experiments.train` applies to
each run; each run gets its own folder `<output_dir>/<parameterization>` (and
resumes there if interrupted).

  python -m experiments.compare --flagfile=experiments/configs/mnist5k_quick.cfg
"""

import math
import os

from absl import flags
from absl import logging

from experiments import flagfiles
from experiments import ownership
from experiments import plot
from experiments import run_config
from experiments import run_io
from experiments import train
from fedpara_tff import runtime

_PARAMETERIZATIONS = flags.DEFINE_list(
    'parameterizations', ['original', 'lowrank', 'fedpara'],
    f'Runs to compare, each one of {run_config.PARAMETERIZATIONS}.')


def _check_parameterizations(values):
  return bool(values) and len(set(values)) == len(values) and set(values) <= set(
      run_config.PARAMETERIZATIONS)


flags.register_validator('parameterizations', _check_parameterizations,
                         message=f'--parameterizations must list distinct values of '
                                 f'{run_config.PARAMETERIZATIONS}.')


def _accuracy(summary):
  value = summary['test_accuracy']
  return summary['personalized_accuracy'] if math.isnan(value) else value


def comparison_lines(summaries):
  """One line per run after the first, against the first; then FedPara (and pFedPara) against
  the same-size low-rank run when both ran (the paper's comparison)."""
  pairs = [(s, summaries[0]) for s in summaries[1:]]
  by_name = {s['parameterization']: s for s in summaries}
  if 'lowrank' in by_name and summaries[0] is not by_name['lowrank']:
    pairs += [(by_name[p], by_name['lowrank']) for p in ('fedpara', 'pfedpara') if p in by_name]
  return [_comparison_line(s, base) for s, base in pairs]


def _comparison_line(s, base):
  ratio = (f'{base["gb_total"] / s["gb_total"]:.2f}x less' if s['gb_total']
           else 'nothing sent')
  return (f'{s["parameterization"]} vs {base["parameterization"]}: accuracy '
          f'{_accuracy(s):.4f} vs {_accuracy(base):.4f}, communication '
          f'{s["gb_total"]:.4f} GB vs {base["gb_total"]:.4f} GB ({ratio}), '
          f'parameters {s["parameters"]:,} vs {base["parameters"]:,}')


def _check_outputs(output_dir, configs):
  """Before any run trains: the comparison's plot and, with --overwrite, each run's folder must
  hold nothing this program did not write (one line naming the file otherwise). The comparison's
  folder is not a run folder: only a PNG marked as ours (`experiments.ownership.is_plot`) is
  replaced there, whatever run folders it holds."""
  try:
    plot.check_output(os.path.join(output_dir, run_io.PLOT_FILE))
  except ValueError as e:
    raise SystemExit(f'compare: error: {e}') from None
  for config in configs:
    if config.overwrite and os.path.isdir(config.output_dir):
      foreign = ownership.foreign_entry(config.output_dir)
      if foreign is not None:
        raise SystemExit(f'compare: error: --overwrite refused: {config.output_dir} holds '
                         f'{foreign}, which a run did not write; nothing was deleted.')


def main(argv):
  flagfiles.no_positional(argv, 'compare')
  logging.set_verbosity(logging.WARNING)
  output_dir = os.path.expanduser(flags.FLAGS.output_dir)
  configs = []   # every run's settings are checked (when built) before the first one starts
  for parameterization in _PARAMETERIZATIONS.value:
    try:
      configs.append(train.config_from_flags(
          parameterization=parameterization,
          output_dir=os.path.join(output_dir, parameterization)))
    except ValueError as e:
      raise SystemExit(f'compare: error: parameterization={parameterization}: '
                       f'{" ".join(str(e).split())}') from None
  train.install_runtime('compare', configs[0])
  runtime.sigterm_as_keyboard_interrupt()
  _check_outputs(output_dir, configs)
  summaries = []
  for config in configs:
    parameterization = config.parameterization
    print(f'== {parameterization}: {config.dataset}, {config.model}, {config.rounds} rounds, '
          f'{config.clients_per_round} of {config.clients} clients per round', flush=True)
    summaries.append(train.run_or_exit(config, program='compare'))
  figure = os.path.join(output_dir, 'accuracy_vs_gb.png')
  plot.plot_runs([s['output_dir'] for s in summaries], figure)
  print(run_io.format_summaries(summaries))
  for line in comparison_lines(summaries):
    print(line)
  print(f'plot: {figure}')


def entry_point():
  """The console script (and `python -m`): packaged flagfiles are found by name."""
  flagfiles.run_main(main, load=train.load_heavy_modules)


if __name__ == '__main__':
  entry_point()
