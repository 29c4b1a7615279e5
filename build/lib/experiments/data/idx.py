"""IDX files (the MNIST family's format) and Fashion-MNIST.

An IDX file is a big-endian header `0x00 0x00 <type> <ndim>`, then `ndim`
uint32 sizes, then the values; Fashion-MNIST ships them gzip-compressed as
`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz` and `t10k-*`.
"""

import gzip
import os
import struct
import zlib

import numpy as np

from experiments.data import common

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_HINT = ('install the Debian package with `apt-get install -y dataset-fashion-mnist` '
                      f'(it writes {FASHION_MNIST_DIR}), or pass --data_dir=DIR holding '
                      'train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
                      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz')
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
           0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path):
  """The array stored in an IDX file (plain or `.gz`).

  Raises:
    CorruptDataError: bad magic number, unknown type, or fewer values than the
      header announces (a truncated file).
  """
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise common.CorruptDataError(f'IDX file {path} is corrupt or truncated: {e}') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
    raise common.CorruptDataError(f'{path} is not an IDX file (bad magic number).')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise common.CorruptDataError(f'IDX file {path} is truncated inside its header.')
  shape = struct.unpack(f'>{ndim}I', raw[4:header])
  dtype = np.dtype(_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise common.CorruptDataError(f'IDX file {path} holds {len(raw) - header} bytes of values; '
                                  f'its header {shape} announces {expected} (truncated?).')
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def write_idx(path, array):
  """Writes `array` (uint8) as an IDX file, gzip-compressed if `path` ends in `.gz`."""
  array = np.asarray(array, np.uint8)
  payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(payload + array.tobytes())


def _pair(data_dir, prefix):
  images, labels = (read_idx(common.require_file(
      os.path.join(data_dir, f'{prefix}-{kind}-ubyte.gz'), 'Fashion-MNIST', FASHION_MNIST_HINT))
                    for kind in ('images-idx3', 'labels-idx1'))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise common.CorruptDataError(f'Fashion-MNIST {prefix} files in {data_dir} disagree: images '
                                  f'{images.shape}, labels {labels.shape}.')
  return (images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32)


def load_fashion_mnist(data_dir=None):
  """Fashion-MNIST: 60,000 train / 10,000 test images `(28, 28, 1)` in [0, 1], 10 classes."""
  data_dir = data_dir or FASHION_MNIST_DIR
  x_train, y_train = _pair(data_dir, 'train')
  x_test, y_test = _pair(data_dir, 't10k')
  return common.Dataset('fashion_mnist', x_train, y_train, x_test, y_test, num_classes=10)
