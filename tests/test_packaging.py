"""Package boundaries: keras_layers never imports TFF; every layer is registered serializable."""

import subprocess
import sys

import tensorflow as tf

import keras_layers as kl


def test_keras_layers_imports_tensorflow_only():
  code = ('import sys, keras_layers; '
          'sys.exit(1 if "tensorflow_federated" in sys.modules else 0)')
  assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def test_every_layer_is_registered_for_deserialization():
  layers = [kl.FedParaDense, kl.PFedParaDense, kl.LowRankDense, kl.FedParaConv1D,
            kl.PFedParaConv1D, kl.LowRankConv1D, kl.FedParaConv2D, kl.PFedParaConv2D,
            kl.LowRankConv2D, kl.FedParaLSTMCell, kl.PFedParaLSTMCell, kl.LowRankLSTMCell,
            kl.FedParaLSTM, kl.PFedParaLSTM, kl.LowRankLSTM]
  for cls in layers:
    assert tf.keras.utils.get_registered_object(f'fedpara>{cls.__name__}') is cls
