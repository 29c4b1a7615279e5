"""Model zoo: plain Keras models; factorised twins come from `keras_layers.convert`."""

import tensorflow as tf

# VGG16 convolution plan: channels, 'M' = 2x2 max pooling.
VGG16_PLAN = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
              512, 512, 512, 'M', 512, 512, 512, 'M')


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
  x = inputs
  conv_index = 0
  for item in VGG16_PLAN:
    if item == 'M':
      x = tf.keras.layers.MaxPool2D(2, padding='same')(x)
      continue
    conv_index += 1
    x = tf.keras.layers.Conv2D(item, 3, padding='same', name=f'conv{conv_index}')(x)
    x = tf.keras.layers.GroupNormalization(groups, name=f'gn{conv_index}')(x)
    x = tf.keras.layers.ReLU()(x)
  x = tf.keras.layers.Flatten()(x)
  x = tf.keras.layers.Dense(512, activation='relu', name='fc1')(x)
  x = tf.keras.layers.Dense(512, activation='relu', name='fc2')(x)
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


def mlp(input_dim=784, hidden=200, num_classes=10, name='mlp'):
  """The 2-layer MLP of the personalisation experiments: in - hidden - hidden - C."""
  return tf.keras.Sequential([
      tf.keras.Input(shape=(input_dim,)),
      tf.keras.layers.Dense(hidden, activation='relu', name='fc1'),
      tf.keras.layers.Dense(hidden, activation='relu', name='fc2'),
      tf.keras.layers.Dense(num_classes, name='logits'),
  ], name=name)
