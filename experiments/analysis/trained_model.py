"""A run's Keras model at the global weights of its latest checkpoint.

Used by the analysis binaries (`experiments.analysis.step_gain`, `experiments.analysis.kernel_fit`) to look at what a
finished or stopped run has learned. The model is rebuilt from the run's `run.json`.
"""

import os

import numpy as np

from experiments import checkpoints
from experiments import models
from experiments import run_io


def global_weights_from_checkpoint(path, model):
  """The trainable values of `model` stored in checkpoint `path` (a run without local variables).

  The server state is stored flattened; the model's variables are the one contiguous run of
  arrays whose shapes match `model.trainable_variables` in order.
  """
  shapes = [tuple(v.shape) for v in model.trainable_variables]
  with np.load(path) as stored:
    arrays = [stored[k] for k in sorted(k for k in stored.files if k.startswith('state_'))]
  starts = [i for i in range(len(arrays) - len(shapes) + 1)
            if all(a.shape == s for a, s in zip(arrays[i:i + len(shapes)], shapes))]
  if len(starts) != 1:
    raise ValueError(f'{path}: found {len(starts)} places matching the model\'s {len(shapes)} '
                     f'variables; expected exactly one.')
  return arrays[starts[0]:starts[0] + len(shapes)]


def load(run_dir, data):
  """`(label, model)`: the run's model at the global weights of its latest checkpoint.

  Args:
    run_dir: a run folder written by `experiments.train`.
    data: the run's data set (`common.Dataset`), for the model's input shape and classes.

  Returns:
    `label` is `<folder name>@round<N>`, N the checkpoint's round.
  """
  run = run_io.read_run(run_dir)
  found = checkpoints.latest(os.path.join(run_dir, 'checkpoints'))
  if found is None:
    raise ValueError(f'{run_dir} has no checkpoint.')
  model = models.build(run['model'], data.input_shape, data.num_classes, run['parameterization'],
                       gamma=None if run['rank'] else run['gamma'], rank=run['rank'],
                       keep_plain=run['keep_plain'], nonlinearity=run['nonlinearity'],
                       factor_init=run.get('factor_init', 'matched_glorot'),
                       factor_lr_scale=run.get('factor_lr_scale'),
                       weight_norm=run.get('weight_norm', False))
  for variable, value in zip(model.trainable_variables,
                             global_weights_from_checkpoint(found[1], model)):
    variable.assign(value)
  return f'{os.path.basename(os.path.normpath(run_dir))}@round{found[0]}', model
