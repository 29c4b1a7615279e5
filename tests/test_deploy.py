"""What docs/USAGE.md's "Save, export and deploy" section states, checked: loading needs the
import, exported models convert to TFLite with the same outputs, and the LSTM's TFLite route."""

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
