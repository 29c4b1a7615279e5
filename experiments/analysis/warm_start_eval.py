r"""What converting a trained model keeps: fit errors and test accuracy before any training.

Loads a trained original run (its latest checkpoint), or a plain zoo model's weights file
(`--pretrained`, as `experiments.pretrain` writes it, with `--dataset` and `--model`), converts it
with each `--variants` entry (`parameterization:rank`, or `parameterization` for the run's gamma,
`--gamma` for a weights file) twice, with fresh factors (`init='random'`, what `convert` did
before) and fitted ones (`init='fit'`, `keras_layers.warm_start`), and prints each conversion's
parameters, per-kernel relative fit error and test accuracy on the test set (a text model's:
over every predicted character), beside the original's.

  python -m experiments.analysis.warm_start_eval \
      --run=runs/capacity_map/fashion_cnn_iid/original --variants=lowrank:16,fedpara:8 \
      --output=docs/results/warm_start/small_cnn_iid.csv
  python -m experiments.analysis.warm_start_eval --pretrained=runs/pretrained/lstm.h5 \
      --dataset=shakespeare --model=lstm --variants=lowrank:28,fedpara:14
"""

import importlib
import os
import time

from absl import flags

from experiments import flagfiles
from experiments import run_config
from experiments.data import registry

_RUN = flags.DEFINE_string('run', None, 'Run folder of a trained original model (or '
                           '--pretrained).')
_PRETRAINED = flags.DEFINE_string('pretrained', None, 'HDF5 weights of the plain --model on '
                                  '--dataset (experiments.pretrain), instead of --run.')
_DATASET = flags.DEFINE_enum('dataset', None, registry.DATASETS, 'With --pretrained: its data '
                             'set.')
_MODEL = flags.DEFINE_enum('model', None, run_config.MODELS, 'With --pretrained: its zoo model.')
_KEEP_PLAIN = flags.DEFINE_list('keep_plain', ['logits'], 'With --pretrained: layers left '
                                'plain.')
_GAMMA = flags.DEFINE_float('gamma', 0.1, 'With --pretrained: the rank rule\'s gamma of a '
                            'variant without a rank.')
_VARIANTS = flags.DEFINE_list('variants', ['lowrank', 'fedpara'],
                              'parameterization[:rank] per conversion; without a rank, the run\'s '
                              'gamma sets it.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the run\'s data files are.')
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write (optional).')
flags.register_multi_flags_validator(
    ['run', 'pretrained'], lambda v: (v['run'] is None) != (v['pretrained'] is None),
    'give one of --run (a trained run folder) or --pretrained (a weights file).')
flags.register_multi_flags_validator(
    ['pretrained', 'dataset', 'model'],
    lambda v: v['pretrained'] is None or None not in (v['dataset'], v['model']),
    '--pretrained needs --dataset and --model (what the weights were trained as).')


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
  """Test accuracy of `model` on the whole test set of `data` (a text set's: over every
  predicted character, as Keras' accuracy metric counts them in training)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  logits = model.predict(data.x_test, batch_size=1000, verbose=0)
  return float(np.mean(logits.argmax(axis=-1).reshape(-1) == data.y_test.reshape(-1)))


def _original(data_dir):
  """`(settings, data, label, model)`: the trained model to convert, from --run or
  --pretrained; `settings` holds its `gamma` and `keep_plain`."""
  # pylint: disable=g-import-not-at-top  # TensorFlow loaded by run_main's load
  from experiments import models
  from experiments import run_io
  from experiments.analysis import trained_model
  # pylint: enable=g-import-not-at-top
  if _PRETRAINED.value is not None:
    data = registry.load(_DATASET.value, data_dir)
    model = models.plain_model(_MODEL.value, data.input_shape, data.num_classes)
    models.load_pretrained(model, _PRETRAINED.value)
    settings = dict(gamma=_GAMMA.value, keep_plain=_KEEP_PLAIN.value)
    return settings, data, os.path.basename(_PRETRAINED.value), model
  try:
    run = run_io.read_run(_RUN.value)
  except (run_io.NoRunError, run_io.DamagedFileError) as e:
    raise ValueError(f'--run={_RUN.value}: {e}') from None
  if run['parameterization'] != 'original':
    raise ValueError(f'--run={_RUN.value} is a {run["parameterization"]!r} run; it converts a '
                     f'trained original model.')
  data = registry.load(run['dataset'], data_dir, sequence_length=run['sequence_length'])
  label, model = trained_model.load(_RUN.value, data)
  return run, data, label, model


def main(argv):
  flagfiles.no_positional(argv, 'warm_start_eval')
  try:
    variants = [parse_variant(v) for v in _VARIANTS.value]
  except ValueError as e:
    raise SystemExit(f'warm_start_eval: error: {e}') from None
  # pylint: disable=g-import-not-at-top  # TensorFlow loaded by run_main's load
  import keras_layers
  from experiments import run_io
  # pylint: enable=g-import-not-at-top
  try:
    run, data, label, original = _original(_DATA_DIR.value)
  except ValueError as e:
    raise SystemExit(f'warm_start_eval: error: {e}') from None
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
