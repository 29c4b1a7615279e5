"""TensorFlow Federated wiring for FedPara: aggregators with measured communication.

FedPara: "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning", Hyeon-Woo, Ye-Bin, Oh, ICLR 2022. Imports TFF; the Keras layers live in
`keras_layers`, which never does. Call `fedpara_tff.runtime.install()` (or enter
`fedpara_tff.runtime.managed()`) before running TFF computations, so that TFF's
worker_binary subprocesses are stopped when this process exits (`fedpara_tff.runtime`).
"""

import importlib.util as _importlib_util
import sys as _sys

# The [tff] extra: without it, fail in one line naming it (the core distribution is the layers).
_MISSING = [m for m in ('tensorflow', 'tensorflow_federated', 'absl', 'psutil', 'grpc')
            if _importlib_util.find_spec(m) is None]
if _MISSING:
  raise ImportError(
      f'fedpara_tff needs the [tff] extra, which is not installed (missing: '
      f'{", ".join(_MISSING)}): pip install "fedpara-tff[tff]" on Python 3.9-3.11 '
      f'(this is Python {_sys.version_info[0]}.{_sys.version_info[1]}).') from None

# `from fedpara_tff import runtime` sorts before the `fedpara_tff.<module>` imports, so it runs
# first: it defaults TF_CPP_MIN_LOG_LEVEL before TF/TFF load (its only import effect).
from fedpara_tff import runtime
from fedpara_tff.aggregators import factor_aggregator
from fedpara_tff.aggregators import FactorAggregatorFactory
from fedpara_tff.aggregators import quantized_mean
from fedpara_tff.aggregators import travel_mask
from fedpara_tff.aggregators import UnweightedFactorAggregatorFactory
from fedpara_tff.distributors import build_measured_broadcast
from fedpara_tff.models import classify_variables
from fedpara_tff.models import keras_model_fn_to_tff
from fedpara_tff.personalization import build_fedavg_driver
from fedpara_tff.personalization import build_fedper_driver
from fedpara_tff.personalization import build_local_only_driver
from fedpara_tff.personalization import build_pfedpara_driver
from fedpara_tff.personalization import build_fedper_process
from fedpara_tff.personalization import build_local_only_process
from fedpara_tff.personalization import build_pfedpara_process
from fedpara_tff.personalization import PersonalizedDriver
from fedpara_tff.personalized_process import PersonalizedProcess
from fedpara_tff.processes import build_evaluation
from fedpara_tff.processes import build_fedpara_process
from fedpara_tff.settings import ALGORITHMS
from fedpara_tff.settings import RoundSettings
from fedpara_tff.settings import SERVER_OPTIMIZERS
from fedpara_tff.settings import SHARED_ROUND_ALGORITHMS
from fedpara_tff.runtime import shutdown_workers
from keras_layers import __version__  # one version for the whole distribution
