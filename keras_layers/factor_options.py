"""The options a factorised kernel takes, and their checks (no Keras: flags list them at once).

`keras_layers.factors` builds kernels from these; the binaries' flags list them before any
Keras or TensorFlow loads (docs/DESIGN.md, "Fast start").
"""

import math

from keras_layers import validation

SCHEMES = ('fedpara', 'pfedpara', 'lowrank')
NONLINEARITIES = (None, 'tanh')
FACTOR_INITS = ('matched_glorot', 'matched_he', 'he_fan_in', 'he_fan_out')
MATCHED = 'matched'
SAFE = 'safe'


def check_scheme(scheme):
  if scheme not in SCHEMES:
    raise ValueError(f'scheme must be one of {SCHEMES}; got {scheme!r}.')
  return scheme


def check_nonlinearity(nonlinearity):
  if nonlinearity not in NONLINEARITIES:
    raise ValueError(
        f'nonlinearity must be one of {NONLINEARITIES}; got {nonlinearity!r}.')
  return nonlinearity


def check_factor_init(factor_init):
  if factor_init not in FACTOR_INITS:
    raise ValueError(
        f'factor_init must be one of {FACTOR_INITS}; got {factor_init!r}.')
  return factor_init


def check_factor_lr_scale(factor_lr_scale):
  """`None`, `'matched'`, `'safe'` or a positive finite number; anything else raises."""
  if factor_lr_scale is None or factor_lr_scale in (MATCHED, SAFE):
    return factor_lr_scale
  if (validation.is_number(factor_lr_scale) and math.isfinite(factor_lr_scale)
      and factor_lr_scale > 0):
    return float(factor_lr_scale)
  raise ValueError(f"factor_lr_scale must be None, 'matched', 'safe' or a positive number; "
                   f'got {factor_lr_scale!r}.')
