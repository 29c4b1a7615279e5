"""Keras conventions: config round-trip, saving, model styles, tf.function, mixed precision."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl

LAYERS = [
    lambda: kl.FedParaDense(7, gamma=0.3, nonlinearity='tanh', activation='relu',
                            kernel_regularizer='l2', factor_init='matched_he'),
    lambda: kl.PFedParaDense(7, rank=2),
    lambda: kl.LowRankDense(7, param_ratio=0.5, use_bias=False),
    lambda: kl.FedParaConv2D(6, (3, 2), rank=2, strides=(1, 2), padding='same',
                             dilation_rate=1, activation='tanh'),
    lambda: kl.PFedParaConv2D(6, 3, gamma=0.7, bias_initializer='ones'),
    lambda: kl.LowRankConv2D(6, 3, rank=3),
    lambda: kl.FedParaConv1D(6, 3, rank=2, padding='causal', dilation_rate=2),
    lambda: kl.FedParaLSTM(5, rank=2, return_sequences=True),
    lambda: kl.PFedParaLSTM(5, gamma=0.5),
    lambda: kl.LowRankLSTM(5, rank=2, weight_norm=True),
    lambda: kl.WeightNormLSTM(5, return_sequences=True),
]
INPUT_SHAPES = [(10,), (10,), (10,), (8, 8, 3), (8, 8, 3), (8, 8, 3), (9, 4), (6, 4), (6, 4),
                (6, 4), (6, 4)]


def sequential(make, input_shape):
  return tf.keras.Sequential([tf.keras.Input(input_shape), make(),
                              tf.keras.layers.Flatten(), tf.keras.layers.Dense(3)])


def sample(input_shape, batch=2):
  return np.random.default_rng(0).normal(size=(batch,) + input_shape).astype(np.float32)


@pytest.mark.parametrize('make', LAYERS)
def test_config_round_trip_rebuilds_identical_layer(make):
  layer = make()
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config


@pytest.mark.parametrize('make, input_shape', list(zip(LAYERS, INPUT_SHAPES)))
@pytest.mark.parametrize('save_format', ['keras', 'tf'])
def test_saved_model_reloads_with_identical_outputs(tmp_path, make, input_shape, save_format):
  model = sequential(make, input_shape)
  x = sample(input_shape)
  path = str(tmp_path / ('model.keras' if save_format == 'keras' else 'saved_model'))
  model.save(path, save_format=save_format)
  reloaded = tf.keras.models.load_model(path)
  assert [type(l) for l in reloaded.layers] == [type(l) for l in model.layers]
  np.testing.assert_array_equal(reloaded(x).numpy(), model(x).numpy())


def test_layers_work_in_functional_and_subclassed_models_and_tf_function():
  inputs = tf.keras.Input((8, 8, 3))
  h = kl.FedParaConv2D(4, 3, rank=2, activation='relu')(inputs)
  h = tf.keras.layers.Flatten()(h)
  functional = tf.keras.Model(inputs, kl.FedParaDense(3, rank=2)(h))

  class Subclassed(tf.keras.Model):

    def __init__(self):
      super().__init__()
      self.conv = kl.PFedParaConv2D(4, 3, rank=2, activation='relu')
      self.flatten = tf.keras.layers.Flatten()
      self.dense = kl.FedParaDense(3, rank=2)

    def call(self, x):
      return self.dense(self.flatten(self.conv(x)))

  subclassed = Subclassed()
  subclassed.build((None, 8, 8, 3))
  x = sample((8, 8, 3))
  for model in (functional, subclassed):
    assert len(model.trainable_variables) == (6 + 1) + (4 + 1)  # factors and bias per layer
    eager = model(x).numpy()
    graph = tf.function(model)(tf.constant(x)).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('make, input_shape', list(zip(LAYERS, INPUT_SHAPES)))
def test_mixed_float16_computes_in_half_and_keeps_float32_factors(make, input_shape):
  tf.keras.mixed_precision.set_global_policy('mixed_float16')
  layer = make()
  out = layer(tf.constant(sample(input_shape)))
  out = out[0] if isinstance(out, list) else out
  assert out.dtype == tf.float16
  assert all(v.dtype == tf.float32 for v in layer.weights)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.cast(layer(tf.constant(sample(input_shape))), tf.float32))
  grads = tape.gradient(loss, layer.trainable_variables)
  assert all(g is not None and g.dtype == tf.float32 for g in grads)


def test_kernel_regularizer_applies_to_the_composed_kernel():
  layer = kl.FedParaDense(6, rank=2, kernel_regularizer=tf.keras.regularizers.L2(0.5))
  layer(tf.zeros((1, 5)))
  (loss,) = layer.losses
  expected = 0.5 * np.sum(layer.composed_kernel().numpy() ** 2)
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_factor_regularizer_applies_to_each_factor():
  layer = kl.FedParaDense(6, rank=2, factor_regularizer=tf.keras.regularizers.L1(0.1),
                          use_bias=False)
  layer(tf.zeros((1, 5)))
  expected = sum(0.1 * np.abs(v.numpy()).sum() for v in layer.weights)
  np.testing.assert_allclose(sum(l.numpy() for l in layer.losses), expected, rtol=1e-5)
