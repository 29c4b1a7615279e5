"""Every bad argument gives one clear error naming the value and what is allowed."""

import numpy as np
import pytest
import tensorflow as tf

import keras_layers as kl


@pytest.mark.parametrize('make, message', [
    (lambda: kl.FedParaDense(8, gamma=1.2), r'gamma must be a number in \[0, 1\]; got 1.2'),
    (lambda: kl.FedParaConv2D(8, 3, gamma=-0.5), r'gamma must be a number in \[0, 1\]; got -0.5'),
    (lambda: kl.FedParaDense(8, rank=0), r'rank must be a positive integer; got 0'),
    (lambda: kl.FedParaDense(8, rank=2.5), r'rank must be a positive integer; got 2.5'),
    (lambda: kl.FedParaDense(8, gamma=0.3, rank=4),
     r'give only one of gamma, rank or param_ratio; got gamma and rank'),
    (lambda: kl.FedParaDense(8.0), r'units must be a positive integer; got 8.0'),
    (lambda: kl.FedParaDense('8'), r"units must be a positive integer; got '8'"),
    (lambda: kl.FedParaConv2D(0, 3), r'filters must be a positive integer; got 0'),
    (lambda: kl.FedParaConv2D(4.5, 3), r'filters must be a positive integer; got 4.5'),
    (lambda: kl.FedParaLSTM(-3), r'units must be a positive integer; got -3'),
    (lambda: kl.FedParaConv2D(8, 3, data_format='channels_first'),
     r"data_format must be 'channels_last' \(or None\); got 'channels_first'"),
    (lambda: kl.FedParaConv2D(8, 3, groups=2), r'groups must be 1 .*; got 2'),
    (lambda: kl.FedParaConv2D(8, 3, padding='causal'),
     r"padding must be one of \('valid', 'same'\); got 'causal'"),
    (lambda: kl.FedParaConv2D(8, (3, 3, 3)), r'kernel_size must be .*; got \(3, 3, 3\)'),
    (lambda: kl.FedParaDense(8, nonlinearity='relu'),
     r"nonlinearity must be one of \(None, 'tanh'\); got 'relu'"),
    (lambda: kl.FedParaDense(8, factor_init='xavier'), r"factor_init must be one of .*got 'xavier'"),
    (lambda: kl.FedParaDense(8, param_ratio=2.0), r'param_ratio must be a number in \(0, 1\]; got 2.0'),
    (lambda: kl.FedParaDense(8, factor_lr_scale=0), r"factor_lr_scale must be None, 'matched', 'safe' or a "
     r'positive number; got 0'),
    (lambda: kl.FedParaDense(8, factor_lr_scale='auto'), r"factor_lr_scale must .*got 'auto'"),
    (lambda: kl.FedParaConv2D(8, 3, factor_lr_scale=float('inf')), r'factor_lr_scale must .*got inf'),
])
def test_bad_constructor_argument_is_named(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize('layer, shape, message', [
    (lambda: kl.FedParaConv2D(8, 5, rank=2), (1, 4, 9, 3),
     r'kernel_size \(5, 5\) .* spans 5 on spatial axis 0, larger than the input size 4 '
     r'allowed by padding "valid"'),
    (lambda: kl.FedParaDense(1, gamma=0.5), (2, 8), r'too small to factorise'),
])
def test_bad_shape_at_build_is_named(layer, shape, message):
  with pytest.raises(ValueError, match=message):
    layer()(tf.zeros(shape))


def test_explicit_rank_up_to_min_dimension_is_accepted():
  layer = kl.FedParaDense(16, rank=16)
  layer(tf.zeros((1, 32)))
  assert layer.ranks == [16]


def test_library_misuse_gets_one_line_errors():
  """The issue's cases: `kl.convert(None)` and `kl.export(Dense(3))` gave misleading errors;
  int32 input failed in FedParaDense where Dense accepts it; a rank of 100000 reached an OOM."""
  with pytest.raises(TypeError, match=r'^convert takes a Sequential or Functional keras.Model; '
                                      r'got NoneType\.$'):
    kl.convert(None)
  with pytest.raises(TypeError, match=r'^export takes .* got Dense \(a model holding that layer'):
    kl.export(tf.keras.layers.Dense(3))
  layer = kl.FedParaDense(4, rank=2)
  x = np.arange(6).reshape(2, 3)
  np.testing.assert_allclose(layer(tf.constant(x, tf.int32)).numpy(),
                             layer(tf.constant(x, tf.float32)).numpy())
  model = tf.keras.Sequential([tf.keras.Input((5, 5, 2)), tf.keras.layers.Conv2D(8, 3),
                               tf.keras.layers.Flatten(), tf.keras.layers.Dense(6)])
  # Kernels (3, 3, 2, 8) and (72, 6): no kernel has rank above 8.
  with pytest.raises(ValueError, match=r'^convert: rank 100000 is above 8, the largest rank of '
                                       r'any kernel it would factorise \(shape \(3, 3, 2, 8\)\)'):
    kl.convert(model, rank=100000)
  assert kl.convert(model, rank=8).layers[0].ranks == [8]   # the bound itself is accepted


@pytest.mark.parametrize('report', [kl.parameter_report, kl.format_parameter_report,
                                    kl.total_params])
@pytest.mark.parametrize('value, name', [(None, 'NoneType'), (tf.keras.layers.Dense(3), 'Dense')])
def test_a_parameter_report_of_something_else_than_a_model_is_one_line(report, value, name):
  """Issue 38: `format_parameter_report(None)` raised AttributeError."""
  with pytest.raises(TypeError, match=rf'^parameter_report takes a Keras model \(one with '
                                      rf'\.layers\); got {name} '):
    report(value)
