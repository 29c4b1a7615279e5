"""Central pretraining of a plain zoo model: the weights file that a run's `--pretrained` reads.

`pretrain` trains the plain model of a run's `--model` on the training pool of a data set,
optionally on some of its classes only (the rest left for the federated clients; image data sets
only: a text set's labels are its next characters, all of them trained), with Adam, and
writes its weights as HDF5, whole or not at all (docs/USAGE.md, "Adapters"). The binary
`experiments.pretrain` calls it.
"""

import os
import time

from experiments.data import registry


def parse_classes(values, num_classes):
  """The `--classes` as sorted distinct ints in [0, num_classes); all of them when empty."""
  if not values:
    return list(range(num_classes))
  try:
    classes = sorted({int(v) for v in values})
  except ValueError:
    raise ValueError(f'classes must be integer labels; got {values}.') from None
  if classes[0] < 0 or classes[-1] >= num_classes:
    raise ValueError(f'classes must be labels in [0, {num_classes}); got {values}.')
  return classes


def check_output(path, overwrite):
  """Refuses to replace an existing file without `overwrite`; makes the folder."""
  if os.path.exists(path) and not overwrite:
    raise ValueError(f'output={path!r} exists; pass --overwrite to replace it.')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def pretrain(dataset, data_dir, download, model_name, classes, epochs, batch_size,
             learning_rate, seed, output, overwrite):
  """Trains the plain model on `classes` of the pool, writes its weights to `output`
  (atomically); returns the summary dict that `main` prints."""
  # pylint: disable=g-import-not-at-top  # TensorFlow loads once the flags are parsed
  import numpy as np
  import tensorflow as tf
  from experiments import models
  # pylint: enable=g-import-not-at-top
  check_output(output, overwrite)
  data = registry.load(dataset, data_dir, download=download)
  if data.task != 'image' and classes:
    raise ValueError(f'classes={",".join(map(str, classes))} picks labels of an image data set; '
                     f'dataset={dataset!r} is {data.task}: leave classes out (all of it).')
  classes = parse_classes(classes, data.num_classes) if data.task == 'image' else None
  train, test = _subsets(data, classes)
  tf.keras.utils.set_random_seed(seed)
  model = models.plain_model(model_name, data.x_train.shape[1:], data.num_classes)
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  start = time.time()
  model.fit(data.x_train[train], data.y_train[train], epochs=epochs, batch_size=batch_size,
            verbose=0)
  seconds = time.time() - start
  partial = output + '.partial.h5'   # written whole, then renamed: never a half file at output
  try:
    model.save_weights(partial)
    os.replace(partial, output)
  finally:
    if os.path.exists(partial):   # only when the write or the rename failed
      os.remove(partial)
  summary = dict(output=output, dataset=dataset, model=model_name, classes=classes,
                 examples=int(train.sum()), epochs=epochs, seed=seed)
  if classes is not None:
    summary['test_accuracy_pretraining_classes'] = float(
        model.evaluate(data.x_test[test], data.y_test[test], verbose=0)[1])
  summary['test_accuracy_all_classes'] = float(
      model.evaluate(data.x_test, data.y_test, verbose=0)[1])
  summary['train_seconds'] = round(seconds, 1)
  return summary


def _subsets(data, classes):
  """`(train, test)` masks over the examples: those labelled with `classes` (an image data
  set), or every example (a text one: `classes` None; its labels are the next characters)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if classes is None:
    return np.ones(len(data.x_train), bool), np.ones(len(data.x_test), bool)
  return np.isin(data.y_train, classes), np.isin(data.y_test, classes)
