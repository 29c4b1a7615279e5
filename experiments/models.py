"""Model zoo: plain Keras models; factorised twins come from `keras_layers.convert`.

`build` turns a zoo name, the data's shape and a parameterisation into the
Keras model of a run; every model is available as original, low-rank, FedPara
and pFedPara (FedPer and local-only use the original model).
"""

import hashlib
import os

import tensorflow as tf

import keras_layers
from experiments import run_config
from keras_layers import adapters as adapters_lib
from keras_layers import conversion
from keras_layers import backend

MODELS = run_config.MODELS
PARAMETERIZATIONS = run_config.PARAMETERIZATIONS

# VGG16 convolution plan: channels, 'M' = 2x2 max pooling.
VGG16_PLAN = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
              512, 512, 512, 'M', 512, 512, 512, 'M')


def _conv_gn_stack(x, plan, groups):
  """VGG's conv stack: per channel count a `Conv2D(3x3, same)` (bias kept, named `conv<i>`),
  GroupNorm (`gn<i>`) and ReLU; `'M'` is a 2x2 max-pooling."""
  conv_index = 0
  for item in plan:
    if item == 'M':
      x = tf.keras.layers.MaxPool2D(2, padding='same')(x)
      continue
    conv_index += 1
    x = tf.keras.layers.Conv2D(item, 3, padding='same', name=f'conv{conv_index}')(x)
    x = tf.keras.layers.GroupNormalization(groups, name=f'gn{conv_index}')(x)
    x = tf.keras.layers.ReLU()(x)
  return x


def vgg16_gn(input_shape=(32, 32, 3), num_classes=10, groups=32, name='vgg16_gn'):
  """VGG16 with group normalization, as in the FedPara paper's CIFAR runs.

  13 `Conv2D(3x3, same)` layers (bias kept) each followed by GroupNorm and ReLU,
  five max-poolings, then the classifier `Dense(512) - Dense(512) - Dense(C)`.
  For 32x32x3 inputs it has 15,253,578 parameters for C=10 and 15,299,748
  for C=100. The classifier layers are named `fc1`, `fc2`, `logits`; convs
  `conv1` ... `conv13`.

  Args:
    input_shape: `(H, W, channels)`; H and W must survive five poolings.
    num_classes: number of output logits C.
    groups: GroupNorm groups (must divide every channel count).
  """
  inputs = tf.keras.Input(shape=input_shape, name='image')
  x = _conv_gn_stack(inputs, VGG16_PLAN, groups)
  x = tf.keras.layers.Flatten()(x)
  x = tf.keras.layers.Dense(512, activation='relu', name='fc1')(x)
  x = tf.keras.layers.Dense(512, activation='relu', name='fc2')(x)
  outputs = tf.keras.layers.Dense(num_classes, name='logits')(x)
  return tf.keras.Model(inputs, outputs, name=name)


# Narrow VGG-style plan for 28x28 inputs: the CPU-sized capacity-limited CNN of docs/RESULTS.md.
VGG_NARROW_PLAN = (16, 16, 'M', 32, 32, 'M', 64, 64, 'M')


def vgg_narrow(input_shape=(28, 28, 1), num_classes=10, groups=4, name='vgg_narrow'):
  """A narrow VGG-style CNN with GroupNorm: 6 conv3x3 (16, 16, M, 32, 32, M, 64, 64, M).

  Each conv (bias kept) is followed by GroupNorm and ReLU, as in `vgg16_gn`;
  then global average pooling and the classifier `Dense(C)` named `logits`.
  Convs are named `conv1` ... `conv6`. 72,890 parameters for 28x28x1 and C=10.
  """
  inputs = tf.keras.Input(shape=input_shape, name='image')
  x = _conv_gn_stack(inputs, VGG_NARROW_PLAN, groups)
  x = tf.keras.layers.GlobalAveragePooling2D()(x)
  outputs = tf.keras.layers.Dense(num_classes, name='logits')(x)
  return tf.keras.Model(inputs, outputs, name=name)


def small_cnn(input_shape=(28, 28, 1), num_classes=10, name='small_cnn'):
  """Conv32-Pool-Conv64-Pool-Dense128-Dense(C): the small image CNN."""
  return tf.keras.Sequential([
      tf.keras.Input(shape=input_shape),
      tf.keras.layers.Conv2D(32, 3, activation='relu', name='conv1'),
      tf.keras.layers.MaxPool2D(2),
      tf.keras.layers.Conv2D(64, 3, activation='relu', name='conv2'),
      tf.keras.layers.MaxPool2D(2),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(128, activation='relu', name='fc1'),
      tf.keras.layers.Dense(num_classes, name='logits'),
  ], name=name)


def mlp(input_shape=(28, 28, 1), hidden=200, num_classes=10, name='mlp'):
  """The 2-layer MLP of the personalisation experiments: flatten - hidden - hidden - C."""
  return tf.keras.Sequential([
      tf.keras.Input(shape=input_shape),
      tf.keras.layers.Flatten(),
      tf.keras.layers.Dense(hidden, activation='relu', name='fc1'),
      tf.keras.layers.Dense(hidden, activation='relu', name='fc2'),
      tf.keras.layers.Dense(num_classes, name='logits'),
  ], name=name)


def shakespeare_lstm(vocab_size, sequence_length=80, embedding=8, units=256,
                     weight_norm=False, name='shakespeare_lstm'):
  """TFF's Shakespeare model: Embedding(8) - LSTM(256) - LSTM(256) - Dense(vocab) per step.

  Input: int32 character ids `(batch, sequence_length)`; output: logits
  `(batch, sequence_length, vocab_size)` for the next character at each step.
  With `weight_norm`, the LSTMs are `keras_layers.WeightNormLSTM` (the paper's LSTM runs).
  """
  lstm = keras_layers.WeightNormLSTM if weight_norm else tf.keras.layers.LSTM
  return tf.keras.Sequential([
      tf.keras.Input(shape=(sequence_length,), dtype=tf.int32),
      tf.keras.layers.Embedding(vocab_size, embedding, name='embedding'),
      lstm(units, return_sequences=True, name='lstm1'),
      lstm(units, return_sequences=True, name='lstm2'),
      tf.keras.layers.Dense(vocab_size, name='logits'),
  ], name=name)


def plain_model(model, input_shape, num_classes, weight_norm=False):
  """The plain zoo model `model` for inputs of `input_shape` and `num_classes` outputs
  (`weight_norm`: weight-normalised LSTMs, model `lstm` only)."""
  if weight_norm and model != 'lstm':
    raise ValueError(f'weight_norm applies to model=lstm; got model={model!r}.')
  if model == 'vgg16':
    return vgg16_gn(input_shape, num_classes)
  if model == 'vgg_narrow':
    return vgg_narrow(input_shape, num_classes)
  if model == 'small_cnn':
    return small_cnn(input_shape, num_classes)
  if model == 'mlp':
    return mlp(input_shape, num_classes=num_classes)
  if model == 'lstm':
    if len(input_shape) != 1:
      raise ValueError(f'model=lstm needs character sequences; the data has inputs of shape '
                       f'{input_shape}.')
    return shakespeare_lstm(num_classes, input_shape[0], weight_norm=weight_norm)
  raise ValueError(f'model must be one of {MODELS}; got {model!r}.')


def check_pretrained_file(path):
  """Refuses, in one line, a `pretrained` path that is not a file."""
  if not os.path.isfile(path):
    raise ValueError(f'pretrained={path!r}: no such file (give the HDF5 weights file of the '
                     f'plain model that experiments.pretrain or model.save_weights wrote).')


def pretrained_fingerprint(path):
  """The SHA-256 of the weights file `path`: a run's identity holds it, so that a run resumes
  only on the same weights, wherever the file lies."""
  check_pretrained_file(path)
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def load_pretrained(keras_model, path):
  """Sets the plain zoo model `keras_model` from the HDF5 weights file `path` (`save_weights`
  to a `.h5` name; `experiments.pretrain` writes one). While a graph is traced (TFF's
  computations) it sets nothing: the round sets a pretrained model's values there from its
  eager build (docs/DESIGN.md, "Adapters").

  Raises:
    ValueError: the file is missing or holds another model's weights (one line).
  """
  if backend.building_graph():
    return
  check_pretrained_file(path)
  try:
    keras_model.load_weights(path)
  except (ValueError, OSError, KeyError, tf.errors.OpError) as error:
    reason = ' '.join(str(error).split())[:200]
    raise ValueError(f'pretrained={path!r} does not hold the weights of model '
                     f'{keras_model.name!r} for this data: {reason}') from None


def _pretrained_model(keras_model, parameterization, options):
  """The pretrained `keras_model` as the run trains it: under adapters (the frozen model plus a
  factorised delta on every Dense / Conv / LSTM not in `keep_plain` or `trainable_layers`), or
  as it is with only `trainable_layers` training (all of it when none are named)."""
  trainable = list(options['trainable_layers'])
  conversion.check_layer_names(keras_model, trainable, 'trainable_layers')
  if not options['adapters']:
    if trainable:
      for layer in keras_model.layers:
        layer.trainable = layer.name in trainable
    return keras_model
  skip = set(options['keep_plain']) | set(trainable)
  targets = [name for name in adapters_lib.select_targets(keras_model) if name not in skip]
  if not targets:
    raise ValueError(f'adapters: no Dense/Conv/LSTM layer of the model is left to adapt '
                     f'(keep_plain={list(options["keep_plain"])}, trainable_layers={trainable}).')
  delta = dict(factor_init=options['factor_init'])
  if parameterization != 'lowrank':
    delta['nonlinearity'] = options['nonlinearity']
  return keras_layers.add_adapters(keras_model, parameterization, gamma=options['gamma'],
                                   rank=options['rank'], alpha=options['adapter_alpha'],
                                   targets=targets, trainable=trainable, **delta)


def build(model, input_shape, num_classes, parameterization='original', gamma=None,
          rank=None, keep_plain=(), nonlinearity=None, weight_decay=0.0,
          factor_init='matched_glorot', factor_lr_scale=None, weight_norm=False,
          pretrained='', adapters=False, adapter_alpha=None, trainable_layers=()):
  """The Keras model of a run.

  Args:
    model: one of `MODELS`.
    input_shape, num_classes: of the data.
    parameterization: one of `PARAMETERIZATIONS`; `original`, `fedper` and
      `local` give the plain model.
    gamma, rank: the rank option of the factorised layers (at most one).
    keep_plain: layer names left plain in a factorised model.
    nonlinearity: None or 'tanh', applied to each Hadamard term (FedPara).
    factor_init: initialisation of the factors (`keras_layers.factors.FACTOR_INITS`).
    factor_lr_scale: `None`, `'safe'`, `'matched'` or a positive number (see
      `keras_layers.FactorizedLayer`): SGD on the factors at that multiple of
      the learning rate; `'matched'` equalises each layer's step with the plain layer's at init;
      `'safe'` takes the plain layer's step projected on directions the factors can reach
      (under client Adam: the update scaled by `keras_layers.sign_rule`).
    weight_norm: weight-normalised LSTMs (model `lstm` only), kept by the
      factorised twins (`keras_layers.weight_norm`).
    weight_decay: adds `weight_decay / 2 * sum ||v||^2` over the trainable
      variables (factors, not composed kernels) to the loss, i.e. SGD weight
      decay of `weight_decay`.
    pretrained: a weights file of the plain model (`load_pretrained`); '' for none. The model
      then trains as it is (`parameterization='original'`) or, with `adapters`, frozen under
      `parameterization`'s adapters (`keras_layers.add_adapters`; `rank` / `gamma` their size,
      `adapter_alpha` their scale numerator, `keep_plain` layers left without one).
    trainable_layers: with `pretrained`, the layers that train as they are; every other layer
      without an adapter is frozen (none named: all train, without adapters).
  """
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f'parameterization must be one of {PARAMETERIZATIONS}; '
                     f'got {parameterization!r}.')
  keras_layers.validation.finite_at_least_zero(weight_decay, 'weight_decay')
  keras_model = plain_model(model, input_shape, num_classes, weight_norm)
  if pretrained:
    load_pretrained(keras_model, pretrained)
    keras_model = _pretrained_model(keras_model, parameterization, dict(
        trainable_layers=trainable_layers, adapters=adapters, keep_plain=keep_plain,
        factor_init=factor_init, nonlinearity=nonlinearity, gamma=gamma, rank=rank,
        adapter_alpha=adapter_alpha))
  elif parameterization in ('lowrank', 'fedpara', 'pfedpara'):
    options = dict(factor_init=factor_init, factor_lr_scale=factor_lr_scale)
    if parameterization != 'lowrank':
      options['nonlinearity'] = nonlinearity
    keras_model = keras_layers.convert(keras_model, parameterization, gamma=gamma, rank=rank,
                                       exclude=list(keep_plain) or None, copy_weights=False,
                                       **options)
  if weight_decay:
    variables = keras_model.trainable_variables
    keras_model.add_loss(lambda: 0.5 * weight_decay * tf.add_n(
        [tf.reduce_sum(tf.square(v)) for v in variables]))
  return keras_model
