"""The names a round takes: algorithms, client and server optimizers (no TensorFlow).

`fedpara_tff.settings` checks a round's settings against these; the binaries' flags list them
before TensorFlow loads (docs/DESIGN.md, "Fast start").
"""

# The algorithms by the names the binaries and `build_fedpara_process` take.
ALGORITHMS = ('fedavg', 'fedprox', 'fedadam', 'fedyogi', 'fedadagrad', 'mimelite', 'scaffold',
              'feddyn')
# Run on fedpara_tff's own round (`fedpara_tff.algorithms`): every one of them.
SHARED_ROUND_ALGORITHMS = ALGORITHMS
# The server optimizer (`fedpara_tff.algorithms.ServerOptimizer`) of each adaptive algorithm:
# FedAdam, FedYogi and FedAdagrad are FedAvg with that server optimizer.
SERVER_OPTIMIZERS = {'fedadam': 'adam', 'fedyogi': 'yogi', 'fedadagrad': 'adagrad'}
SERVER_OPTIMIZER_NAMES = ('sgd', 'adam', 'yogi', 'adagrad')
# TFF's default second-moment decay of server Adam / Yogi (`--server_beta_2`).
DEFAULT_SERVER_BETA_2 = 0.999
# Algorithms that correct the client's SGD steps (and so refuse client Adam).
SGD_CORRECTING = ('scaffold', 'feddyn', 'mimelite')
# How the server combines the clients' factors (`fedpara_tff.kernel_mean`).
AGGREGATIONS = ('factor_mean', 'kernel_mean')
# The client optimizers (`fedpara_tff.client_optimizer`), reset every round.
CLIENT_OPTIMIZERS = ('sgd', 'adam')


def check_client_optimizer(name, momentum=0.0):
  """`name` if it is a client optimizer and `momentum` (SGD's) goes with it; else a ValueError."""
  if name not in CLIENT_OPTIMIZERS:
    raise ValueError(f'client_optimizer must be one of {CLIENT_OPTIMIZERS}; got {name!r}.')
  if momentum and name != 'sgd':
    raise ValueError(f'client_momentum={momentum} applies to SGD; got client_optimizer={name!r} '
                     f'(Adam keeps its own moments).')
  return name
