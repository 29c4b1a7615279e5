"""CINIC-10 in its image-folder layout: `<data_dir>/{train,valid,test}/<class>/*.png`.

The 10 class folders are sorted by name to give labels 0-9. `train` and
`valid` form the training pool (as the CINIC authors suggest for final runs);
`test` is held out. Images are 32x32 RGB.
"""

import os

import numpy as np
import tensorflow as tf

from experiments.data import common

HINT = ('download CINIC-10 (https://datashare.ed.ac.uk/handle/10283/3192), unpack it and pass '
        '--data_dir=DIR where DIR/train/<class>/*.png, DIR/valid/... and DIR/test/... exist')


def _read_split(root, split, classes):
  images, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, split, name)
    if not os.path.isdir(folder):
      raise common.DataNotFoundError(f'CINIC-10 folder {folder} not found; {HINT}.')
    for file in sorted(os.listdir(folder)):
      if not file.lower().endswith('.png'):
        continue
      path = os.path.join(folder, file)
      try:
        image = tf.io.decode_png(tf.io.read_file(path), channels=3).numpy()
      except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise common.CorruptDataError(f'CINIC-10 image {path} is corrupt: '
                                      f'{e.message.splitlines()[0]}') from e
      if image.shape != (32, 32, 3):
        raise common.CorruptDataError(f'CINIC-10 image {path} is {image.shape}; '
                                      f'expected (32, 32, 3).')
      images.append(image)
      labels.append(label)
  if not images:
    raise common.DataNotFoundError(f'no CINIC-10 images under {os.path.join(root, split)}; {HINT}.')
  return np.stack(images).astype(np.float32) / 255.0, np.asarray(labels, np.int32)


def load_cinic10(data_dir):
  """CINIC-10: the train+valid pool and the test split, 10 classes."""
  root = data_dir or '.'
  train_dir = os.path.join(root, 'train')
  if not os.path.isdir(train_dir):
    raise common.DataNotFoundError(f'CINIC-10 folder {train_dir} not found; {HINT}.')
  classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
  if len(classes) != 10:
    raise common.CorruptDataError(f'{train_dir} holds {len(classes)} class folders; '
                                  f'CINIC-10 has 10.')
  x_train, y_train = _read_split(root, 'train', classes)
  splits = [(x_train, y_train)]
  if os.path.isdir(os.path.join(root, 'valid')):
    splits.append(_read_split(root, 'valid', classes))
  x_test, y_test = _read_split(root, 'test', classes)
  return common.Dataset('cinic10', np.concatenate([s[0] for s in splits]),
                        np.concatenate([s[1] for s in splits]), x_test, y_test, num_classes=10)
