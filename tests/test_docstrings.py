"""The examples in the layer docstrings run and print what they claim."""

import doctest

import pytest
import tensorflow as tf

import keras_layers
from keras_layers import attention
from keras_layers import conv
from keras_layers import dense
from keras_layers import einsum_dense
from keras_layers import lstm
from keras_layers import lstm_cells


@pytest.mark.parametrize('module', [dense, einsum_dense, attention, conv, lstm, lstm_cells])
def test_docstring_examples_hold(module):
  # The public names as a reader's `from keras_layers import *` gets them: the package loads
  # them on first use, so `vars(keras_layers)` lacks them in a process that imported
  # `experiments` first (which defers the layers).
  globs = dict({name: getattr(keras_layers, name) for name in keras_layers.__all__}, tf=tf)
  result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
