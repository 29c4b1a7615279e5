"""The examples in the layer docstrings run and print what they claim."""

import doctest

import pytest
import tensorflow as tf

import keras_layers
from keras_layers import conv
from keras_layers import dense
from keras_layers import lstm
from keras_layers import lstm_cells


@pytest.mark.parametrize('module', [dense, conv, lstm, lstm_cells])
def test_docstring_examples_hold(module):
  globs = dict(vars(keras_layers), tf=tf)
  result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
