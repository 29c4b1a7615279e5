"""pFedPara and FedPer with stateful clients on the TFF runtime."""

import collections
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

import fedpara_tff
import keras_layers as kl
from tests import tff_support as ts

# Three clients with disjoint label sets: personalisation has something to learn.
LABELS = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))


@pytest.fixture(scope='module')
def data():
  arrays = ts.label_skewed_arrays(LABELS, 100)
  train = [ts.to_dataset(x[:70], y[:70]) for x, y in arrays]
  test = [ts.to_dataset(x[70:], y[70:]) for x, y in arrays]
  return train, test


@pytest.fixture(scope='module')
def pfedpara():
  return fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC,
                                            client_learning_rate=0.2)


def test_only_global_factors_reach_the_aggregator(pfedpara):
  shapes = [tuple(t.shape) for t in pfedpara.aggregator_value_type]
  # hidden x1 (16,3), y1 (98,3), bias; logits x1 (10,2), y1 (16,2), bias: no *2_local factor.
  assert shapes == [(16, 3), (98, 3), (16,), (10, 2), (16, 2), (10,)]
  assert [tuple(t.shape) for t in pfedpara.local_type] == [(16, 3), (98, 3), (10, 2), (16, 2)]


def test_local_factors_persist_differ_and_start_from_init(pfedpara, data):
  train, _ = data
  state = pfedpara.initialize()
  initial = pfedpara.local_state('never-sampled')
  state, metrics = pfedpara.next(state, ['a', 'b'], train[:2])
  after_first = {c: [v.copy() for v in pfedpara.local_state(c)] for c in ('a', 'b')}
  for c in ('a', 'b'):
    assert any(not np.allclose(v, w) for v, w in zip(after_first[c], initial))
  assert any(not np.allclose(v, w) for v, w in zip(after_first['a'], after_first['b']))
  # Round 2 samples only 'a': 'b' keeps its factors untouched, 'a' continues from its own.
  state, _ = pfedpara.next(state, ['a'], train[:1])
  for v, w in zip(pfedpara.local_state('b'), after_first['b']):
    np.testing.assert_array_equal(v, w)
  assert any(not np.allclose(v, w) for v, w in zip(pfedpara.local_state('a'), after_first['a']))
  assert 'c' not in pfedpara.local_store
  for v, w in zip(pfedpara.local_state('c'), initial):
    np.testing.assert_array_equal(v, w)
  comm = metrics['aggregator']['communication']
  assert comm['elements_uploaded_per_client'] == 420
  assert comm['bytes_uploaded'] == 2 * 420 * 4
  assert metrics['train']['bytes_downloaded'] == 2 * 420 * 4


def test_pfedpara_sends_about_half_of_fedpara_at_the_same_rank(pfedpara):
  global_elements = sum(int(np.prod(t.shape)) for t in pfedpara.aggregator_value_type)
  assert global_elements == 420
  assert ts.FEDPARA_ELEMENTS == 814
  # Half of the factors, plus the biases (26 elements) that both send.
  assert global_elements - 26 == (ts.FEDPARA_ELEMENTS - 26) / 2


def test_personalised_accuracy_on_own_held_out_data_is_well_above_chance(data):
  train, test = data
  trainer = fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'),
                                               ts.ELEMENT_SPEC, client_learning_rate=0.2,
                                               local_epochs=5)
  state = trainer.initialize()
  ids = ['a', 'b', 'c']
  for _ in range(8):
    state, metrics = trainer.next(state, ids, train)
  personal = trainer.evaluate(state, ids, test)
  assert [r['num_examples'] for r in personal] == [30.0, 30.0, 30.0]
  accuracy = np.mean([r['accuracy'] for r in personal])
  assert accuracy > 0.55  # chance on these clients: mean of 1/3, 1/3, 1/4 = 0.31
  assert metrics['train']['loss'] < 1.5


def test_fedper_keeps_whole_layers_local(data):
  train, _ = data
  trainer = fedpara_tff.build_fedper_driver(ts.keras_model, ts.ELEMENT_SPEC,
                                             local_layers=['logits'])
  # FedPara hidden layer travels (x1, y1, x2, y2, bias); the logits layer (5 tensors) stays.
  assert len(trainer.aggregator_value_type) == 5
  assert len(trainer.local_type) == 5
  state, metrics = trainer.next(trainer.initialize(), ['a'], train[:1])
  assert metrics['aggregator']['communication']['elements_uploaded_per_client'] == 2 * (48 + 294) + 16


def plain_model():
  return tf.keras.Sequential([tf.keras.Input((ts.FEATURES,)),
                              tf.keras.layers.Dense(16, activation='relu', name='hidden'),
                              tf.keras.layers.Dense(10, name='logits')])


def test_fedper_runs_on_a_plain_model_too(data):
  trainer = fedpara_tff.build_fedper_driver(plain_model, ts.ELEMENT_SPEC, local_layers=['logits'])
  _, metrics = trainer.next(trainer.initialize(), ['a'], data[0][:1])
  assert metrics['aggregator']['communication']['elements_uploaded_per_client'] == 98 * 16 + 16


def test_local_only_sends_nothing_and_keeps_every_variable_per_client(data):
  train, test = data
  trainer = fedpara_tff.build_local_only_driver(lambda: ts.keras_model('pfedpara'),
                                                 ts.ELEMENT_SPEC, client_learning_rate=0.2)
  assert len(trainer.aggregator_value_type) == 0
  assert len(trainer.local_type) == 10  # 8 factors and 2 biases of keras_model('pfedpara')
  state = trainer.initialize()
  for _ in range(2):
    state, metrics = trainer.next(state, ['a', 'b'], train[:2])
  assert metrics['aggregator']['communication']['bytes_uploaded'] == 0
  assert metrics['train']['bytes_downloaded'] == 0
  assert any(not np.allclose(v, w) for v, w in zip(trainer.local_state('a'),
                                                   trainer.local_state('b')))
  assert len(trainer.evaluate(state, ['a', 'b'], test[:2])) == 2


def test_bad_inputs_are_named(pfedpara, data):
  with pytest.raises(ValueError, match=r'client_learning_rate must be a finite number > 0; got 0'):
    fedpara_tff.build_pfedpara_driver(ts.keras_model, ts.ELEMENT_SPEC, client_learning_rate=0)
  with pytest.raises(ValueError, match=r'the model has no local variable'):
    fedpara_tff.build_pfedpara_driver(ts.keras_model, ts.ELEMENT_SPEC)
  with pytest.raises(ValueError, match=r'FedPer needs at least one local layer'):
    fedpara_tff.build_fedper_driver(ts.keras_model, ts.ELEMENT_SPEC, local_layers=[])
  batch_norm = lambda: tf.keras.Sequential([
      tf.keras.Input((ts.FEATURES,)), kl.PFedParaDense(8, rank=2, name='h'),
      tf.keras.layers.BatchNormalization(), tf.keras.layers.Dense(10)])
  with pytest.raises(ValueError, match=r'2 non-trainable variable\(s\) .* use GroupNormalization'):
    fedpara_tff.build_pfedpara_driver(batch_norm, ts.ELEMENT_SPEC)
  with pytest.raises(ValueError, match=r"client_ids must be distinct .* got \['a', 'a'\]"):
    pfedpara.next(pfedpara.initialize(), ['a', 'a'], data[0][:2])
  # The library misuse: a model where a function is expected, a round with no client.
  with pytest.raises(TypeError, match=r'^keras_model_fn must be a function returning a new '
                                      r'Keras model .* got Sequential'):
    fedpara_tff.build_pfedpara_driver(ts.keras_model('pfedpara'), ts.ELEMENT_SPEC)
  with pytest.raises(ValueError, match=r'^a round needs at least one client; got no client_ids'):
    pfedpara.next(pfedpara.initialize(), [], [])


def _dataset(x, y):
  return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(ts.BATCH)


def test_element_specs_that_are_not_one_are_refused_in_one_line():
  """The issue's case: a missing or mismatched element_spec reached TFF's type conversion."""
  model_fn = lambda: ts.keras_model('pfedpara')
  with pytest.raises(TypeError, match=r"^element_spec must be .* keys 'x' and 'y' .* got "
                                      r"NoneType None\.$"):
    fedpara_tff.build_pfedpara_driver(model_fn, None)
  with pytest.raises(TypeError, match=r"^element_spec must be .* got tuple"):
    fedpara_tff.build_pfedpara_driver(model_fn, tuple(ts.ELEMENT_SPEC.values()))
  # A float label spec with the default (sparse) loss: 3.7 would be truncated to class 3.
  float_labels = collections.OrderedDict(x=ts.ELEMENT_SPEC['x'], y=tf.TensorSpec([None]))
  with pytest.raises(ValueError, match=r"^element_spec\['y'\] is float32: .* truncate a label "
                                       r"such as 3.7 to 3"):
    fedpara_tff.build_pfedpara_driver(model_fn, float_labels)


def test_round_inputs_that_do_not_fit_the_driver_are_refused_in_one_line(pfedpara, data):
  """The issue's cases: a dataset of another spec, float labels, another model's state, a label
  outside the classes reached TFF internals (a 277-line serialisation error, an RPC error)."""
  state = pfedpara.initialize()
  x, y = next(iter(data[0][1].unbatch().batch(70)))['x'].numpy(), np.arange(70) % 10
  with pytest.raises(ValueError, match=r"^client 'q2': its dataset has elements "
                                       r"x=float32\[\?,50\], y=int32\[\?\]; this driver was "
                                       r"built for element_spec x=float32\[\?,98\], "
                                       r"y=int32\[\?\]\.$"):
    pfedpara.next(state, ['q1', 'q2'], [data[0][0], _dataset(x[:, :50], y.astype(np.int32))])
  with pytest.raises(ValueError, match=r"^client 'q1': its dataset has elements .*y=float32"):
    pfedpara.next(state, ['q1'], [_dataset(x, y.astype(np.float32) + 0.7)])
  labels = np.where(np.arange(70) == 33, 12, y).astype(np.int32)
  with pytest.raises(ValueError, match=r"^client 'q2': its dataset holds label 12, outside the "
                                       r"model's 10 classes: labels must be class indices in "
                                       r"\[0, 10\)\.$"):
    pfedpara.next(state, ['q1', 'q2'], [data[0][0], _dataset(x, labels)])
  other = fedpara_tff.build_fedavg_driver(ts.keras_model, ts.ELEMENT_SPEC).initialize()
  for call in (lambda: pfedpara.next(other, ['a'], data[0][:1]),
               lambda: pfedpara.evaluate(other, ['a'], data[1][:1])):
    with pytest.raises(ValueError, match=r"^state holds 10 global weights; this driver's model "
                                         r"has 6: it is another model's state"):
      call()
  with pytest.raises(TypeError, match=r"^state must be the server state this driver's "
                                      r"initialize\(\) or next\(\) returned .* got NoneType"):
    pfedpara.next(None, ['a'], data[0][:1])
  assert pfedpara.local_store.get(['q1', 'q2']) == [None, None]   # nothing was stored


def test_a_round_where_no_client_counted_says_so(pfedpara, data):
  """The issue's case: every client empty, or every client diverged, returned loss 0.0 and
  accuracy 0.0. Now: all empty is refused; all diverged reports NaN (and moves nothing)."""
  state = pfedpara.initialize()
  x = next(iter(data[0][0]))['x'].numpy()
  empty = _dataset(x[:0], np.zeros(0, np.int32))
  with pytest.raises(ValueError, match=r"^every client dataset of this round is empty \(clients "
                                       r"'e1', 'e2'\): nothing was trained"):
    pfedpara.next(state, ['e1', 'e2'], [empty, empty])
  nan = _dataset(np.full_like(x, np.nan), np.arange(len(x), dtype=np.int32) % 10)
  new_state, metrics = pfedpara.next(state, ['n1'], [nan])
  train = metrics['train']
  assert train['diverged_clients'] == 1 and train['num_examples'] == 0
  assert np.isnan(train['loss']) and np.isnan(train['accuracy'])
  for old, new in zip(state['global_weights'], new_state['global_weights']):
    np.testing.assert_array_equal(old, new)
  # One client with data among empty ones is a normal round.
  _, metrics = pfedpara.next(state, ['e1', 'a'], [empty, data[0][0]])
  assert metrics['train']['num_examples'] == 70 and np.isfinite(metrics['train']['loss'])


def test_evaluate_gives_an_empty_client_no_accuracy_and_refuses_only_empty_clients(pfedpara,
                                                                                   data):
  """Issue 38: `evaluate` on an empty client returned accuracy 0.0."""
  state = pfedpara.initialize()
  x = next(iter(data[1][0]))['x'].numpy()
  empty = _dataset(x[:0], np.zeros(0, np.int32))
  results = pfedpara.evaluate(state, ['e1', 'a'], [empty, data[1][0]])
  assert results[0]['num_examples'] == 0 and np.isnan(results[0]['accuracy'])
  assert results[1]['num_examples'] == 30 and 0 <= results[1]['accuracy'] <= 1
  with pytest.raises(ValueError, match=r"^every client dataset given to evaluate is empty "
                                       r"\(clients 'e1', 'e2'\): there is no accuracy"):
    pfedpara.evaluate(state, ['e1', 'e2'], [empty, empty])


def test_a_model_for_keras_model_fn_or_an_element_spec_the_model_cannot_take_is_one_line():
  """Issue 38: `factor_aggregator(keras_model_fn=<a model>)` said "The first argument to
  Layer.call must always be passed"; a wrong element_spec raised a 29-frame autograph error."""
  model = ts.keras_model('pfedpara')
  for call in (lambda: fedpara_tff.factor_aggregator(keras_model_fn=model),
               lambda: fedpara_tff.build_pfedpara_driver(model, ts.ELEMENT_SPEC)):
    with pytest.raises(TypeError, match=r'^keras_model_fn must be a function returning a new '
                                        r'Keras model .* got Sequential: pass e\.g\. '):
      call()
  flat = collections.OrderedDict(x=tf.TensorSpec([None, 7, 14]), y=ts.ELEMENT_SPEC['y'])
  with pytest.raises(ValueError, match=r"^element_spec\['x'\] has shape \(None, 7, 14\), which "
                                       r"the model's input \(None, 98\) does not take"):
    fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'), flat)


def test_next_takes_any_iterable_of_datasets_as_evaluate_does(pfedpara, data):
  """The issue's case: `next()` refused a generator that `evaluate()` accepts."""
  state = pfedpara.initialize()
  _, metrics = pfedpara.next(state, ['g1', 'g2'], (d for d in data[0][:2]))
  assert metrics['train']['num_examples'] > 0


def test_variables_are_classified_factor_local_global_other():
  model = tf.keras.Sequential([tf.keras.Input((ts.FEATURES,)),
                               kl.PFedParaDense(8, rank=2, name='h'),
                               tf.keras.layers.BatchNormalization(name='bn'),
                               kl.FedParaDense(6, rank=2, name='f'),
                               tf.keras.layers.Dense(10, name='out')])
  kinds = fedpara_tff.classify_variables(model, local_layers=['out'])
  short = {name.split(':')[0]: kind for name, kind in kinds.items()}
  assert short == {
      'h/x1': 'factor', 'h/y1': 'factor', 'h/x2_local': 'local', 'h/y2_local': 'local',
      'h/bias': 'global', 'bn/gamma': 'global', 'bn/beta': 'global',
      'bn/moving_mean': 'other', 'bn/moving_variance': 'other',
      'f/x1': 'factor', 'f/y1': 'factor', 'f/x2': 'factor', 'f/y2': 'factor', 'f/bias': 'global',
      'out/kernel': 'local', 'out/bias': 'local'}


def test_model_fn_adapter_feeds_a_stock_tff_builder():
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  model_fn = fedpara_tff.keras_model_fn_to_tff(ts.keras_model, ts.ELEMENT_SPEC)
  weights_type = tff.learning.models.weights_type_from_model(model_fn)
  assert len(weights_type.trainable) == 10 and len(weights_type.non_trainable) == 0


def test_diverged_clients_send_nothing_and_keep_their_local_variables(data):
  trainer = fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'),
                                               ts.ELEMENT_SPEC, client_learning_rate=1e30)
  state = trainer.initialize()
  before = [np.asarray(w) for w in state['global_weights']]
  initial_local = trainer.local_state('a')
  state, metrics = trainer.next(state, ['a', 'b'], data[0][:2])
  assert metrics['train']['diverged_clients'] == 2 and metrics['train']['num_examples'] == 0
  for old, new in zip(before, state['global_weights']):
    np.testing.assert_array_equal(old, new)  # zero-weight updates move nothing
  for old, new in zip(initial_local, trainer.local_state('a')):
    np.testing.assert_array_equal(old, new)


def test_learning_rate_decays_per_round(data):
  """Round 2 of (lr 0.2, decay 0.5) equals one round at lr 0.1 from the same point."""
  model_fn = lambda: ts.keras_model('pfedpara')
  decayed = fedpara_tff.build_pfedpara_driver(model_fn, ts.ELEMENT_SPEC,
                                               client_learning_rate=0.2, lr_decay=0.5)
  state = decayed.initialize()
  state, _ = decayed.next(state, ['a'], data[0][:1])
  plain = fedpara_tff.build_pfedpara_driver(model_fn, ts.ELEMENT_SPEC, client_learning_rate=0.1)
  start = plain.initialize()
  start['global_weights'] = state['global_weights']
  plain.store_local('a', decayed.local_state('a'))
  state, _ = decayed.next(state, ['a'], data[0][:1])
  assert int(state['round_num']) == 2
  expected, _ = plain.next(start, ['a'], data[0][:1])
  for a, b in zip(state['global_weights'], expected['global_weights']):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(decayed.local_state('a'), plain.local_state('a')):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'lr_decay must be a number in \(0, 1\]; got 1.5'):
    fedpara_tff.build_pfedpara_driver(model_fn, ts.ELEMENT_SPEC, lr_decay=1.5)


def test_tff_template_driven_by_a_program_loop_equals_the_python_driver(data):
  """3 rounds of pFedPara through the `PersonalizedProcess` template, client states kept in a
  dict by the loop, equal the `PersonalizedDriver`'s 3 rounds from the same initial values."""
  train, _ = data
  by_id = dict(zip('abc', train))
  schedule = (['a', 'b'], ['c', 'a'], ['b', 'c'])
  model_fn = lambda: ts.keras_model('pfedpara')  # pylint: disable=unnecessary-lambda-assignment
  process = fedpara_tff.build_pfedpara_process(model_fn, ts.ELEMENT_SPEC,
                                               client_learning_rate=0.2, lr_decay=0.9)
  assert isinstance(process, fedpara_tff.PersonalizedProcess)
  state = process.initialize()
  initial_local = [np.asarray(v) for v in process.initial_client_state()]
  initial_global = [np.asarray(v) for v in state['global_weights']]
  client_states = {}
  for ids in schedule:
    output = process.next(state, [by_id[c] for c in ids],
                          [client_states.get(c, initial_local) for c in ids])
    # TFF's LearningProcessOutput fields, and the clients' states; it unpacks as a 3-tuple.
    assert isinstance(output, fedpara_tff.PersonalizedOutput)
    state, new_states, metrics = output
    assert output.state is state and output.metrics is metrics
    client_states.update(zip(ids, new_states))
  template_weights = process.get_model_weights(state)
  assert list(template_weights.non_trainable) == []

  driver = fedpara_tff.build_pfedpara_driver(model_fn, ts.ELEMENT_SPEC,
                                             client_learning_rate=0.2, lr_decay=0.9)
  everything = [None] * (len(driver.global_index) + len(driver.local_index))
  for index, value in zip(driver.global_index + driver.local_index,
                          initial_global + initial_local):
    everything[index] = value
  driver_state = driver.initialize(everything)
  for ids in schedule:
    driver_state, driver_metrics = driver.next(driver_state, ids, [by_id[c] for c in ids])
  for got, want in zip(template_weights.trainable, driver_state['global_weights']):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert int(state['round_num']) == int(driver_state['round_num']) == 3
  for c in 'abc':
    for got, want in zip(client_states[c], driver.local_state(c)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert metrics['aggregator']['communication'] == driver_metrics['aggregator']['communication']
  np.testing.assert_allclose(metrics['train']['loss'], driver_metrics['train']['loss'], rtol=1e-6)
  # Training moved the global weights from their initial values.
  assert any(not np.allclose(w, v) for w, v in zip(template_weights.trainable, initial_global))
