"""What docs/USAGE.md's "Save, export and deploy" section states, checked: loading needs the
import, exported models convert to TFLite with the same outputs, and the LSTM's TFLite route."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import keras_layers as kl


def _cnn():
  return tf.keras.Sequential([
      tf.keras.Input((8, 8, 1)), kl.FedParaConv2D(4, 3, rank=2, activation='relu'),
      tf.keras.layers.Flatten(), kl.FedParaDense(3, rank=2)])


def _run_tflite(content, x):
  interpreter = tf.lite.Interpreter(model_content=content)
  index = interpreter.get_input_details()[0]['index']
  interpreter.resize_tensor_input(index, x.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, x)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


def test_keras_file_loads_in_a_fresh_process_only_after_importing_keras_layers(tmp_path):
  model = _cnn()
  x = np.random.default_rng(0).random((2, 8, 8, 1), np.float32)
  path, expected = tmp_path / 'model.keras', tmp_path / 'expected.npy'
  model.save(path)
  np.save(expected, model(x).numpy())
  np.save(tmp_path / 'x.npy', x)
  load = ('import numpy as np, tensorflow as tf{imp}; m = tf.keras.models.load_model({p!r}); '
          'np.testing.assert_allclose(m(np.load({x!r})).numpy(), np.load({e!r}), atol=1e-6)')
  args = dict(p=str(path), x=str(tmp_path / 'x.npy'), e=str(expected))
  without = subprocess.run([sys.executable, '-c', load.format(imp='', **args)],
                           capture_output=True, text=True, timeout=300)
  assert without.returncode != 0   # Keras's own message does not name the missing import
  assert 'FedParaConv2D' in without.stderr
  with_import = subprocess.run([sys.executable, '-c', load.format(imp=', keras_layers', **args)],
                               capture_output=True, text=True, timeout=300)
  assert with_import.returncode == 0, with_import.stderr[-1500:]


def test_exported_cnn_converts_to_tflite_with_the_same_outputs():
  model = _cnn()
  x = np.random.default_rng(1).random((3, 8, 8, 1), np.float32)
  content = tf.lite.TFLiteConverter.from_keras_model(kl.export(model)).convert()
  np.testing.assert_allclose(_run_tflite(content, x), model(x).numpy(), atol=1e-5)


def test_exported_lstm_converts_to_tflite_at_a_fixed_batch_size():
  model = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Embedding(10, 4),
                               kl.FedParaLSTM(16, rank=3), tf.keras.layers.Dense(10)])
  plain = kl.export(model)
  x = np.random.default_rng(2).integers(0, 10, (1, 5)).astype(np.float32)
  function = tf.function(plain).get_concrete_function(tf.TensorSpec([1, 5], tf.float32))
  content = tf.lite.TFLiteConverter.from_concrete_functions([function], plain).convert()
  np.testing.assert_allclose(_run_tflite(content, x), model(x).numpy(), atol=1e-5)


def _docker_ignores(patterns, path):
  """Whether `.dockerignore` `patterns` (no `!` exceptions) keep `path` out of the build
  context: a pattern matches the path or one of its parent folders; `**/` matches any depth."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  parts = path.split('/')
  prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
  for pattern in patterns:
    for candidate in ([pattern, pattern[3:]] if pattern.startswith('**/') else [pattern]):
      for prefix in prefixes:
        if fnmatch.fnmatchcase(prefix, candidate) or (
            pattern.startswith('**/') and fnmatch.fnmatchcase(prefix.split('/')[-1], candidate)):
          return True
  return False


def test_the_image_and_the_repository_keep_keys_out():
  """Issue 37: the Dockerfile did `COPY . .` with no .dockerignore while the docs made `certs/`
  in the repository root, so ca.key went into the image; `certs/` was not git-ignored."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, '.dockerignore'), encoding='utf-8') as f:
    patterns = [line.strip() for line in f if line.strip() and not line.startswith('#')]
  assert not [p for p in patterns if p.startswith('!')]
  for secret in ('certs/ca.key', 'certs/ca.pem', 'certs/worker.key', 'deploy/driver.key',
                 'runs/fashion_cnn/checkpoints/ckpt-000001.npz', '.venv/bin/python', '.git/HEAD'):
    assert _docker_ignores(patterns, secret), secret
  for needed in ('setup.py', 'requirements.txt', 'scripts/setup_env.sh', 'experiments/worker.py',
                 'experiments/configs/fashion_mnist_cnn_iid.cfg', 'fedpara_tff/worker_tls.py'):
    assert not _docker_ignores(patterns, needed), needed
  ignored = subprocess.run(['git', 'check-ignore', 'certs/ca.key', 'certs/worker.pem'], cwd=root,
                           capture_output=True, text=True, check=False).stdout.split()
  assert ignored == ['certs/ca.key', 'certs/worker.pem']
  with open(os.path.join(root, 'deploy', 'kubernetes', 'workers.yaml'), encoding='utf-8') as f:
    images = [line.split('image:')[1].split('#')[0].strip() for line in f if 'image:' in line]
  assert images and all(not image.endswith(':latest') and ':' in image for image in images)
