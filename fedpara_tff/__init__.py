"""TensorFlow Federated wiring for FedPara: aggregators with measured communication.

FedPara: "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning", Hyeon-Woo, Ye-Bin, Oh, ICLR 2022. Imports TFF; the Keras layers live in
`keras_layers`, which never does. Call `fedpara_tff.runtime.install()` (or enter
`fedpara_tff.runtime.managed()`) before running TFF computations, so that TFF's
worker_binary subprocesses are stopped when this process exits (`fedpara_tff.runtime`).

`import fedpara_tff` loads neither TensorFlow nor TFF (docs/DESIGN.md, "Fast start"): each public
name loads its module when first used (`fedpara_tff.build_fedpara_process`,
`from fedpara_tff import factor_aggregator`).
"""

import importlib
import importlib.util
import sys

# The [tff] extra: without it, fail in one line naming it (the core distribution is the layers).
_MISSING = [m for m in ('tensorflow', 'tensorflow_federated', 'absl', 'psutil', 'grpc')
            if importlib.util.find_spec(m) is None]
if _MISSING:
  raise ImportError(
      f'fedpara_tff needs the [tff] extra, which is not installed (missing: '
      f'{", ".join(_MISSING)}): pip install "fedpara-tff[tff]" on Python 3.9-3.11 '
      f'(this is Python {sys.version_info[0]}.{sys.version_info[1]}).') from None

# `runtime` is light (no TF): it defaults TF_CPP_MIN_LOG_LEVEL before any module loads TF.
from fedpara_tff import runtime  # pylint: disable=g-import-not-at-top

# Public name -> the module that defines it.
_EXPORTS = {
    'factor_aggregator': 'aggregators', 'FactorAggregatorFactory': 'aggregators',
    'quantized_mean': 'aggregators', 'travel_mask': 'aggregators',
    'UnweightedFactorAggregatorFactory': 'aggregators',
    'build_measured_broadcast': 'distributors',
    'classify_variables': 'models', 'keras_model_fn_to_tff': 'models',
    'build_fedavg_driver': 'personalization', 'build_fedper_driver': 'personalization',
    'build_local_only_driver': 'personalization', 'build_pfedpara_driver': 'personalization',
    'build_fedper_process': 'personalization', 'build_local_only_process': 'personalization',
    'build_pfedpara_process': 'personalization', 'PersonalizedDriver': 'personalization',
    'PersonalizedProcess': 'personalized_process', 'PersonalizedOutput': 'personalized_process',
    'build_evaluation': 'processes', 'build_fedpara_process': 'processes',
    'ALGORITHMS': 'choices', 'SERVER_OPTIMIZERS': 'choices',
    'SHARED_ROUND_ALGORITHMS': 'choices',
    'RoundSettings': 'settings',
    'shutdown_workers': 'runtime',
}

__all__ = sorted(_EXPORTS) + ['runtime', '__version__']


def __getattr__(name):
  if name == '__version__':   # one version for the whole distribution
    return importlib.import_module('keras_layers').__version__
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    globals()[name] = value   # later look-ups skip this function
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
