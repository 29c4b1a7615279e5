r"""Whether a factorised model's rank limited it: its trained kernels' ranks beside the original's.

For each factorised run folder (its latest checkpoint) and each factorised kernel, on the kernel's
matrix unfolding (inputs x outputs; a convolution's `(k1 * k2 * I) x O`):

- `cap`: the largest rank the parameterisation reaches there, `min(r, m, n)` for low-rank at rank
  `r` and `min(R^2, m, n)` for FedPara at rank `R` (a Hadamard product of two rank-R terms; the
  Tucker-2 convolution's output mode has the same bound), `docs/DESIGN.md` "Rank rule";
- `numerical_rank`: how many singular values of the trained kernel exceed `--rtol` times the
  largest (an exactly rank-r kernel in float32 shows r);
- `energy_at_cap`: of the trained *original* model of the same setting and seed (the run folder
  `original` or `original_seed<N>` beside it, or `--original`), the share of the kernel's squared
  Frobenius norm that its best rank-`cap` approximation holds (Eckart-Young: the top `cap`
  singular values). Near 1, a kernel of the parameterisation's rank could hold what the original
  learned there, so that model was not limited by its rank; well below 1, it was.

Prints one markdown row per run name and kernel, mean +- sample std over the seeds (`NAME` and
`NAME_seed<N>`, as `results_table --seeds` groups them); `--output` writes one CSV row per run and
kernel. Runs that have not finished (no summary.json) are left out and named.

  python -m experiments.analysis.rank_use --runs='runs/capacity_map/fashion_cnn_iid/*_r2*'
"""

import glob
import importlib
import os

from absl import flags

from experiments import flagfiles
from experiments.analysis import rank_measures

_RUNS = flags.DEFINE_list('runs', None, 'Factorised run folders (comma-separated; globs allowed).')
_ORIGINAL = flags.DEFINE_string(
    'original', None, 'Run folder of the trained original model to compare every run with '
    '(default: original[_seed<N>] beside each run, matching its seed suffix).')
_RTOL = flags.DEFINE_float('rtol', 1e-3, 'Singular values above rtol x the largest count as rank.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the runs\' data files are.')
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write, one row per run and kernel.')
flags.mark_flag_as_required('runs')


def main(argv):
  flagfiles.no_positional(argv, 'rank_use')
  folders = [m for pattern in _RUNS.value for m in sorted(glob.glob(pattern)) or [pattern]
             if os.path.isdir(m)]
  if not folders:
    raise SystemExit(f'rank_use: error: --runs matched no run folder: {_RUNS.value}')
  if _RTOL.value is None or not 0 < _RTOL.value < 1:
    raise SystemExit(f'rank_use: error: --rtol must be in (0, 1); got {_RTOL.value}')
  # pylint: disable=g-import-not-at-top
  from experiments import run_io
  from experiments.data import registry
  # pylint: enable=g-import-not-at-top
  rows, data, unfinished = [], None, []
  for folder in folders:
    if not os.path.exists(os.path.join(folder, run_io.SUMMARY_FILE)):
      unfinished.append(os.path.basename(os.path.normpath(folder)))   # its checkpoint is midway
      continue
    try:
      run = run_io.read_run(folder)
      if data is None:
        data = registry.load(run['dataset'], _DATA_DIR.value,
                             sequence_length=run['sequence_length'])
      original = _ORIGINAL.value or rank_measures.original_of(folder)
      rows += rank_measures.kernel_rows(folder, original, data, _RTOL.value)
    except (run_io.NoRunError, run_io.DamagedFileError, ValueError) as e:
      raise SystemExit(f'rank_use: error: --runs: {e}') from None
  print('\n'.join(rank_measures.table_lines(rows)))
  if unfinished:
    print(f'not finished, left out: {", ".join(unfinished)}')
  if _OUTPUT.value:
    run_io.write_table(_OUTPUT.value, rows)
    print(f'wrote {_OUTPUT.value}')


def _load_tensorflow():
  """TensorFlow, loaded once the flags parsed and before absl runs `main`: Keras 2 first imported
  inside `app.run` cannot build the runs' models (`experiments.flagfiles.run_main`)."""
  importlib.import_module('tensorflow')


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load_tensorflow)
