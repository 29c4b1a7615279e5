r"""What converting a trained model keeps: fit errors and test accuracy before any training.

Loads a trained original run (its latest checkpoint), converts it with each `--variants` entry
(`parameterization:rank`, or `parameterization` for the run's gamma) twice, with fresh factors
(`init='random'`, what `convert` did before) and fitted ones (`init='fit'`,
`keras_layers.warm_start`), and prints each conversion's parameters, per-kernel relative fit
error and test accuracy on the run's test set, beside the original's.

  python -m experiments.analysis.warm_start_eval \
      --run=runs/capacity_map/fashion_cnn_iid/original --variants=lowrank:16,fedpara:8 \
      --output=docs/results/warm_start/small_cnn_iid.csv
"""

import importlib
import time

from absl import flags

from experiments import flagfiles

_RUN = flags.DEFINE_string('run', None, 'Run folder of a trained original model.')
_VARIANTS = flags.DEFINE_list('variants', ['lowrank', 'fedpara'],
                              'parameterization[:rank] per conversion; without a rank, the run\'s '
                              'gamma sets it.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the run\'s data files are.')
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write (optional).')
flags.mark_flag_as_required('run')


def parse_variant(entry):
  """`'fedpara:8'` -> `('fedpara', 8)`; `'lowrank'` -> `('lowrank', None)`; ValueError else."""
  name, _, rank = entry.partition(':')
  if name not in ('lowrank', 'fedpara', 'pfedpara'):
    raise ValueError(f'variant {entry!r}: the parameterization must be lowrank, fedpara or '
                     f'pfedpara; got {name!r}.')
  if rank and not (rank.isdigit() and int(rank) > 0):
    raise ValueError(f'variant {entry!r}: the rank must be a positive integer; got {rank!r}.')
  return name, int(rank) if rank else None


def accuracy(model, data):
  """Test accuracy of `model` on the whole test set of `data`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  logits = model.predict(data.x_test, batch_size=1000, verbose=0)
  return float(np.mean(logits.argmax(axis=-1) == data.y_test.reshape(-1)))


def main(argv):
  flagfiles.no_positional(argv, 'warm_start_eval')
  try:
    variants = [parse_variant(v) for v in _VARIANTS.value]
  except ValueError as e:
    raise SystemExit(f'warm_start_eval: error: {e}') from None
  # pylint: disable=g-import-not-at-top  # TensorFlow loaded by run_main's load
  import keras_layers
  from experiments import run_io
  from experiments.analysis import trained_model
  from experiments.data import registry
  # pylint: enable=g-import-not-at-top
  try:
    run = run_io.read_run(_RUN.value)
  except (run_io.NoRunError, run_io.DamagedFileError) as e:
    raise SystemExit(f'warm_start_eval: error: --run={_RUN.value}: {e}') from None
  if run['parameterization'] != 'original':
    raise SystemExit(f'warm_start_eval: error: --run={_RUN.value} is a '
                     f'{run["parameterization"]!r} run; it converts a trained original model.')
  data = registry.load(run['dataset'], _DATA_DIR.value, sequence_length=run['sequence_length'])
  label, original = trained_model.load(_RUN.value, data)
  rows = [dict(run=label, variant='original', init='-', parameters=original.count_params(),
               fit_errors='', seconds=0.0, test_accuracy=round(accuracy(original, data), 4))]
  for name, rank in variants:
    for init in ('random', 'fit'):
      start = time.perf_counter()
      twin = keras_layers.convert(original, name, rank=rank,
                                  gamma=None if rank else run['gamma'],
                                  exclude=list(run['keep_plain']) or None, init=init,
                                  copy_weights=True)
      seconds = time.perf_counter() - start
      errors = [e for r in keras_layers.parameter_report(twin) for e in r.fit_errors]
      rows.append(dict(run=label, variant=f'{name}:{rank}' if rank else name, init=init,
                       parameters=twin.count_params(),
                       fit_errors=' '.join(f'{e:.4f}' for e in errors), seconds=round(seconds, 1),
                       test_accuracy=round(accuracy(twin, data), 4)))
  print('| variant | init | parameters | fit error per kernel | test accuracy | convert s |')
  print('|---|---|---:|---|---:|---:|')
  for r in rows:
    print(f'| {r["variant"]} | {r["init"]} | {r["parameters"]:,} | {r["fit_errors"] or "-"} | '
          f'{r["test_accuracy"]:.4f} | {r["seconds"]} |')
  if _OUTPUT.value:
    run_io.write_table(_OUTPUT.value, rows)
    print(f'wrote {_OUTPUT.value}')


def _load_tensorflow():
  """TensorFlow, loaded once the flags parsed and before absl runs `main`
  (`experiments.flagfiles.run_main`)."""
  importlib.import_module('tensorflow')


if __name__ == '__main__':
  flagfiles.run_main(main, load=_load_tensorflow)
