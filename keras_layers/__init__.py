"""FedPara, pFedPara and low-rank Keras layers (Keras 2 or Keras 3, no TFF).

FedPara: "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning", Hyeon-Woo, Ye-Bin, Oh, ICLR 2022 (arXiv 2108.06098).
See `factors` for the math every layer shares and `ranks` for the rank rule.
"""

__version__ = '0.2.0'

from keras_layers import factors
from keras_layers import jacobian
from keras_layers import sign_rule
from keras_layers import weight_norm
from keras_layers.base import FactorizedLayer
from keras_layers.base import factorized_layers
from keras_layers.conv import FedParaConv1D
from keras_layers.conv import FedParaConv2D
from keras_layers.conv import LowRankConv1D
from keras_layers.conv import LowRankConv2D
from keras_layers.conv import PFedParaConv1D
from keras_layers.conv import PFedParaConv2D
from keras_layers.conversion import convert
from keras_layers.conversion import export
from keras_layers.conversion import is_factorized
from keras_layers.dense import FedParaDense
from keras_layers.dense import LowRankDense
from keras_layers.dense import PFedParaDense
from keras_layers.jacobian import JacobianCorrectedModel
from keras_layers.lstm import FedParaLSTM
from keras_layers.lstm import FedParaLSTMCell
from keras_layers.lstm import LowRankLSTM
from keras_layers.lstm import LowRankLSTMCell
from keras_layers.lstm import PFedParaLSTM
from keras_layers.lstm import PFedParaLSTMCell
from keras_layers.lstm import WeightNormLSTM
from keras_layers.lstm import WeightNormLSTMCell
from keras_layers.ranks import fedpara_param_count
from keras_layers.ranks import lowrank_param_count
from keras_layers.ranks import original_param_count
from keras_layers.ranks import r_max
from keras_layers.ranks import r_min
from keras_layers.ranks import rank_for_gamma
from keras_layers.ranks import rank_for_param_ratio
from keras_layers.report import format_parameter_report
from keras_layers.report import parameter_report
from keras_layers.report import total_params
from keras_layers.routing import local_variable_mask
from keras_layers.routing import split_global_local
from keras_layers.torch_layout import load_torch_factors
from keras_layers.torch_layout import torch_kernel_to_keras
