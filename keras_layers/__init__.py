"""FedPara, pFedPara and low-rank Keras layers (Keras 2 or Keras 3, no TFF).

FedPara: "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning", Hyeon-Woo, Ye-Bin, Oh, ICLR 2022 (arXiv 2108.06098).
See `factors` for the math every layer shares and `ranks` for the rank rule.

`import keras_layers` loads the layers, which registers them for Keras deserialisation
(`keras.models.load_model` of a model with FedPara layers needs only this import). The
binaries of `experiments` list the factor options (`keras_layers.factor_options`) before they
parse their flags, without Keras: for them the layers load on the first public name used
(docs/DESIGN.md, "Fast start").
"""

import importlib
import sys

__version__ = '0.2.0'

# Public name -> the module that defines it.
_EXPORTS = {
    'FactorizedLayer': 'base', 'factorized_layers': 'base',
    'add_adapters': 'adapters', 'adapter_weights': 'adapters', 'load_adapters': 'adapters',
    'save_adapters': 'adapters',
    'FedParaConv1D': 'conv', 'FedParaConv2D': 'conv', 'LowRankConv1D': 'conv',
    'LowRankConv2D': 'conv', 'PFedParaConv1D': 'conv', 'PFedParaConv2D': 'conv',
    'convert': 'conversion', 'export': 'conversion', 'is_factorized': 'conversion',
    'FedParaDense': 'dense', 'LowRankDense': 'dense', 'PFedParaDense': 'dense',
    'FedParaMultiHeadAttention': 'attention', 'LowRankMultiHeadAttention': 'attention',
    'PFedParaMultiHeadAttention': 'attention',
    'FedParaEinsumDense': 'einsum_dense', 'LowRankEinsumDense': 'einsum_dense',
    'PFedParaEinsumDense': 'einsum_dense',
    'JacobianCorrectedModel': 'jacobian',
    'FedParaLSTM': 'lstm', 'FedParaLSTMCell': 'lstm_cells', 'LowRankLSTM': 'lstm',
    'LowRankLSTMCell': 'lstm_cells', 'PFedParaLSTM': 'lstm', 'PFedParaLSTMCell': 'lstm_cells',
    'WeightNormLSTM': 'lstm', 'WeightNormLSTMCell': 'lstm_cells',
    'fedpara_param_count': 'ranks', 'lowrank_param_count': 'ranks',
    'original_param_count': 'ranks', 'r_max': 'ranks', 'r_min': 'ranks',
    'rank_for_gamma': 'ranks', 'rank_for_param_ratio': 'ranks',
    'format_parameter_report': 'report', 'parameter_report': 'report', 'total_params': 'report',
    'local_variable_mask': 'routing', 'split_global_local': 'routing',
    'load_torch_factors': 'torch_layout', 'torch_kernel_to_keras': 'torch_layout',
}
# Submodules reachable as attributes (`keras_layers.factors`), as before the lazy init.
_SUBMODULES = ('factors', 'factor_init', 'step_gain', 'jacobian', 'sign_rule', 'weight_norm')
# Loaded together on first use: every module that defines a layer Keras may deserialise.
_LAYER_MODULES = ('dense', 'einsum_dense', 'attention', 'conv', 'lstm_cells', 'lstm', 'jacobian',
                  'conversion')

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ['load_layers']


_loading = []   # non-empty while `_load_layers` runs


def _load_layers():
  """Imports the layer modules. A layer module that names a submodule while they load
  (`from keras_layers import weight_norm`) comes back here: that call returns at once, so that
  no layer module is imported again before the one importing it has finished."""
  if _loading:
    return
  _loading.append(True)
  try:
    for module in _LAYER_MODULES:
      importlib.import_module(f'{__name__}.{module}')
  finally:
    _loading.clear()


def load_layers() -> None:
  """Loads every layer module now (registering the layers for Keras deserialisation): what
  `import keras_layers` does, for a program that deferred it (`experiments`). Call it at the top
  level, not inside a `tf.Graph` (a TFF trace): Keras 2 picks a layer's base classes when its
  module first loads there (docs/DESIGN.md, "Fast start")."""
  for name in _EXPORTS:
    __getattr__(name)


def _deferred():
  """True in a program that asked for the layers on first use: the package `experiments` (its
  binaries answer `--help` before Keras loads) sets `DEFER_KERAS_LAYERS` before it imports us."""
  return bool(getattr(sys.modules.get('experiments'), 'DEFER_KERAS_LAYERS', False))


def __getattr__(name):
  if name in _SUBMODULES:
    _load_layers()
    return importlib.import_module(f'{__name__}.{name}')
  if name in _EXPORTS:
    _load_layers()
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    globals()[name] = value   # later look-ups skip this function
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))


if not _deferred():
  load_layers()
