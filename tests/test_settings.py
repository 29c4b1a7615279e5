"""`RoundSettings` (each rule once, one schedule), the numeric checks, the one interface to
factorised layers, the one travel mask and the one download count."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import algorithms
from fedpara_tff import communication
from fedpara_tff import settings as settings_lib
from fedpara_tff import tf_backend
import keras_layers as kl
from keras_layers import validation
from tests import tff_support as ts


@pytest.mark.parametrize('fields, message', [
    (dict(client_learning_rate=True),
     r'client_learning_rate must be a finite number > 0; got True'),
    (dict(client_learning_rate=math.nan),
     r'client_learning_rate must be a finite number > 0; got nan'),
    # inf passes `> 0` (issue 25): a learning rate must be finite.
    (dict(client_learning_rate=math.inf),
     r'client_learning_rate must be a finite number > 0; got inf'),
    (dict(server_learning_rate=math.inf),
     r'server_learning_rate must be a finite number > 0; got inf'),
    (dict(local_epochs=1.0), r'local_epochs must be an integer >= 1; got 1.0'),
    (dict(lr_decay=0.0), r'lr_decay must be a number in \(0, 1\]; got 0.0'),
    (dict(client_momentum=1.0), r'client_momentum must be a number in \[0, 1\); got 1.0'),
    (dict(jacobian_correction=math.inf),
     r'jacobian_correction must be a finite number >= 0; got inf'),
    (dict(feddyn_alpha=-1), r'feddyn_alpha must be a finite number > 0; got -1'),
    (dict(algorithm='fedadam', server_optimizer='yogi'),
     r"algorithm=fedadam steps the server with 'adam'; got server_optimizer='yogi'"),
    (dict(algorithm='scaffold', num_clients=4, server_optimizer='adam'),
     r'algorithm=scaffold takes server SGD without momentum'),
    (dict(algorithm='fedprox'), r'algorithm=fedprox needs proximal_strength > 0; got 0.0'),
    (dict(algorithm='feddyn', num_clients=2.5), r'FedDyn needs num_clients .* got 2.5'),
    (dict(algorithm='scaffold', num_clients=4.0), r'SCAFFOLD needs num_clients .* got 4.0'),
    (dict(client_optimizer='adam', client_momentum=0.5),
     r"client_momentum=0.5 applies to SGD; got client_optimizer='adam'"),
    (dict(jacobian_correction=1.0, client_momentum=0.5),
     r'jacobian_correction=1.0 needs plain client SGD steps'),
    (dict(server_optimizer='adagrad', server_beta_2=0.99),
     r'server_beta_2=0.99 applies to fedadam or fedyogi; got algorithm=fedavg, '
     r"server_optimizer='adagrad'"),
])
def test_each_rule_is_refused_in_one_line_naming_the_value(fields, message):
  with pytest.raises(ValueError, match=message) as raised:
    settings_lib.RoundSettings(**fields)
  assert '\n' not in str(raised.value)


def test_settings_are_frozen_and_normalised():
  settings = settings_lib.RoundSettings(client_learning_rate=1, algorithm='fedyogi',
                                        server_beta_2=0.99)
  assert settings.client_learning_rate == 1.0 and isinstance(settings.client_learning_rate, float)
  assert settings.server_optimizer == 'yogi' and settings.base_algorithm == 'fedavg'
  assert settings_lib.RoundSettings(proximal_strength=0.1).base_algorithm == 'fedprox'
  assert settings_lib.RoundSettings(algorithm='mimelite', client_momentum=0.9).local_momentum == 0
  with pytest.raises(Exception):
    settings.client_learning_rate = 0.5  # frozen
  with pytest.raises(ValueError, match=r'lr_decay must be'):
    settings.replace(lr_decay=2.0)   # a copy is checked again


def test_the_one_schedule_is_lr_times_decay_to_the_round():
  settings = settings_lib.RoundSettings(client_learning_rate=0.3, lr_decay=0.9)
  rates = [float(settings.learning_rate_at(tf.constant(r))) for r in range(4)]
  np.testing.assert_allclose(rates, [0.3, 0.27, 0.243, 0.2187], rtol=1e-6)


def test_the_algorithm_is_built_from_the_settings():
  adam = algorithms.build(settings_lib.RoundSettings(algorithm='fedadam', server_beta_2=0.99))
  assert adam.name == 'fedavg' and adam.optimizer.name == 'adam' and adam.optimizer.beta_2 == 0.99
  dyn = algorithms.build(settings_lib.RoundSettings(algorithm='feddyn', feddyn_alpha=0.2,
                                                    num_clients=7))
  assert (dyn.name, dyn.alpha, dyn.num_clients) == ('feddyn', 0.2, 7)


def test_a_driver_takes_the_settings_or_their_fields_not_both():
  settings = fedpara_tff.RoundSettings(client_learning_rate=0.05)
  with pytest.raises(ValueError, match=r'give either settings or its fields, not both; got '
                                       r"settings and \['lr_decay'\]"):
    fedpara_tff.build_fedavg_driver(ts.keras_model, ts.ELEMENT_SPEC, settings=settings,
                                    lr_decay=0.9)
  driver = fedpara_tff.build_fedavg_driver(ts.keras_model, ts.ELEMENT_SPEC, settings=settings)
  assert driver.settings is settings


def test_a_device_executor_needs_existing_devices():
  with pytest.raises(ValueError, match=r"device '/GPU:7' does not exist here"):
    fedpara_tff.build_fedavg_driver(ts.keras_model, ts.ELEMENT_SPEC,
                                    client_executor=tf_backend.on_devices(['/GPU:7']))


def test_numeric_checks():
  assert validation.number(0.5, 'x', 0, 1) == 0.5
  with pytest.raises(ValueError, match=r'^x must be a finite number in \[0, 1\]; got inf.$'):
    validation.number(math.inf, 'x', 0, 1, finite=True)
  with pytest.raises(ValueError, match=r'^x must be a number < 2; got 2.$'):
    validation.number(2, 'x', high=2, high_closed=False)
  with pytest.raises(ValueError, match=r'^n must be an integer >= 3; got True.$'):
    validation.integer(True, 'n', 3)
  with pytest.raises(ValueError, match=r"^mode must be one of \('a', 'b'\); got 'c'.$"):
    validation.one_of('c', 'mode', ('a', 'b'))


def _mixed_model():
  return tf.keras.Sequential([
      tf.keras.Input((5, 3)),
      kl.PFedParaLSTM(4, rank=2, return_sequences=True, name='lstm'),
      tf.keras.layers.RNN(kl.FedParaLSTMCell(4, rank=2, name='cell'), name='rnn'),
      kl.FedParaDense(6, rank=2, name='dense'),
      tf.keras.layers.Dense(2, name='plain'),
  ])


def test_factorised_layers_answer_one_interface():
  model = _mixed_model()
  layers = kl.factorized_layers(model)
  # `model.submodules` order: the model's layers, then what they hold (the RNN's cell).
  assert [layer.name for layer in layers] == ['lstm', 'dense', 'cell']
  labels = [label for layer in layers for label, _ in layer.labelled_factorizations()]
  assert labels == ['lstm/kernel', 'lstm/recurrent', 'dense', 'cell/kernel', 'cell/recurrent']
  shapes = [f.kernel_shape for layer in layers for _, f in layer.labelled_factorizations()]
  assert shapes == [(3, 16), (4, 16), (4, 6), (4, 16), (4, 16)]
  # pFedPara's local factors: x2, y2 of each LSTM kernel.
  assert sorted(v.name.split('/')[-1].split(':')[0] for v in layers[0].local_weights) == [
      'kernel_x2_local', 'kernel_y2_local', 'recurrent_x2_local', 'recurrent_y2_local']
  with pytest.raises(ValueError, match=r"the factorised cell cell \(FedParaLSTMCell\) runs "
                                       r"outside the package's LSTM layers"):
    kl.jacobian.corrected_factorizations(model)


def test_one_travel_mask_for_the_round_and_tffs_builders():
  model = _mixed_model()
  mask = fedpara_tff.travel_mask(model)
  local = {v.name for v in kl.factorized_layers(model)[0].local_weights}
  assert mask == [v.name not in local for v in model.trainable_variables]
  assert sum(not m for m in mask) == 4
  plain = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
  with pytest.raises(ValueError, match=r'has no factorised layer'):
    fedpara_tff.travel_mask(plain)
  assert fedpara_tff.travel_mask(plain, require_factorized=False) == [True, True]


def test_one_download_count():
  specs = [tf.TensorSpec((3, 4), tf.float32), tf.TensorSpec((5,), tf.float32)]
  assert int(communication.broadcast_bytes(tf.constant(3), specs)) == 3 * 4 * (12 + 5)
  spec = collections.OrderedDict(x=tf.TensorSpec([None, ts.FEATURES], tf.float32),
                                 y=tf.TensorSpec([None], tf.int32))
  driver = fedpara_tff.build_fedavg_driver(ts.keras_model, spec)
  arrays = ts.client_arrays([20, 20])
  _, metrics = driver.next(driver.initialize(), ['a', 'b'], [ts.to_dataset(*a) for a in arrays])
  assert int(metrics['train']['bytes_downloaded']) == 2 * 4 * ts.FEDPARA_ELEMENTS
