"""The federated algorithms of the shared round: a client piece and a server piece each.

Every algorithm here trains the same model the same way (minibatch steps of the
client optimizer over `local_epochs` passes, `fedpara_tff.client_work.build_client_train`)
and differs in three places, which these classes supply as TensorFlow code run
by both backends:

* `gradient`: the correction added to each global variable's gradient;
* `client_finish`: the extra values a client uploads and its new algorithm state
  (MIME-lite's use the client's full-batch gradient at `x`, computed when the
  algorithm sets `full_gradient`);
* `server`: the server's step from the aggregated uploads.

Notation, per global variable: `x` the server's value at the start of the round
(what the client starts from), `w` the client's current value, `y` its value
after local training, `eta` the round's client learning rate, `K` the client's
number of local steps, `S` the round's clients, `N` all clients, `eta_g` the server
learning rate. Clients send `x - y` (the FedAvg update), so the server step of
plain FedAvg is `x <- x - eta_g mean_S(x - y)`. Only global variables get a
correction or a state: pFedPara's local factors and FedPer's local layers train
with their plain gradients.
"""

from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from fedpara_tff import settings as settings_lib
from fedpara_tff import update_transforms

NAMES = ('fedavg', 'fedprox', 'scaffold', 'feddyn', 'mimelite')

Tensors = List[tf.Tensor]
MaybeTensor = Optional[tf.Tensor]
Specs = Sequence[tf.TensorSpec]


class ServerOptimizer:
  """The server's step on the pseudo-gradient `D = mean_S(x - y)` (Reddi et al., "Adaptive
  Federated Optimization", ICLR 2021), in the form of TFF's optimizers with their defaults
  (`fedpara_tff.update_transforms.build`, the client optimizer's rules too):

  * `sgd`: `a <- beta a + D` (no `a` without momentum), `x <- x - eta_g a`;
  * `adam`: `m <- m + (D - m)(1 - b1)`, `v <- v + (D^2 - v)(1 - b2)`,
    `x <- x - eta_g sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + 1e-7)`, b1 0.9, b2 `beta_2`
    (TFF's default 0.999; the FedPara paper's FedAdam runs use 0.99);
  * `yogi`: as Adam with `v <- v + (1 - b2) sign(D^2 - v) D^2`, `v` from 1e-6, epsilon 1e-3;
  * `adagrad`: `v <- v + D^2` (from 0.1), `x <- x - eta_g D / sqrt(v + 1e-7)`.

  Its state is a list of arrays: `[a...]`, `[m..., v..., t]` or `[v...]`.
  """

  def __init__(self, name: str = 'sgd', momentum: float = 0.0,
               beta_2: float = settings_lib.DEFAULT_SERVER_BETA_2) -> None:
    # Checked by `fedpara_tff.settings.RoundSettings`, through which `build` makes it.
    self.name, self.momentum, self.beta_2 = name, float(momentum), float(beta_2)
    self._transform = update_transforms.build(name, self.momentum, self.beta_2)
    self.stateful = self._transform.state_size(1) > 0   # plain SGD keeps no state

  def initial_state(self, specs: Specs) -> Tensors:
    """TF values of the state for global variables of `specs` (TensorSpecs)."""
    return self._transform.init(specs)

  def step(self, x: Tensors, d: Tensors, state: Tensors,
           learning_rate: tf.Tensor) -> Tuple[Tensors, Tensors]:
    """`(new x, new state)` after one step along the pseudo-gradient `d`."""
    steps, state = self._transform.update(list(d), list(state), learning_rate)
    return [xi - s for xi, s in zip(x, steps)], state


class FedAvg:
  """FedAvg, and FedProx with `proximal_strength` mu > 0; any `ServerOptimizer`
  (FedAdam, FedYogi, FedAdagrad, server momentum).

  FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys
  2020, eq. 2): the client minimises `F_k(w) + mu/2 ||w - x||^2`, so each
  gradient gets `mu (w - x)`. The mean is weighted by the clients' examples. The
  server optimizer's state, if any, is the server state's `control`.
  """

  name = 'fedavg'
  uniform = False        # weighted by examples
  client_state = False   # no per-client arrays besides the model's local variables
  uploads = 1            # arrays sent per global variable
  broadcast_control = False  # whether clients receive the server state too
  full_gradient = False  # whether clients compute their full-batch gradient at x

  def __init__(self, proximal_strength: float = 0.0,
               server_optimizer: Optional[ServerOptimizer] = None) -> None:
    self.mu = float(proximal_strength)
    self.optimizer = server_optimizer or ServerOptimizer()
    self.server_state = self.optimizer.stateful
    if self.mu:
      self.name = 'fedprox'

  def control_specs(self, specs: Specs) -> List[tf.TensorSpec]:
    return [tf.TensorSpec(v.shape, v.dtype) for v in self.optimizer.initial_state(specs)]

  def initial_control(self, specs: Specs) -> Tensors:
    return self.optimizer.initial_state(specs)

  def gradient(self, g: tf.Tensor, w: tf.Variable, x: tf.Tensor, c_server: MaybeTensor,
               c_client: MaybeTensor) -> tf.Tensor:
    del c_server, c_client
    return g + self.mu * (w - x) if self.mu else g

  def client_finish(self, x: Tensors, y: Tensors, c_server: Sequence[MaybeTensor],
                    c_client: Sequence[MaybeTensor], steps: tf.Tensor, learning_rate: tf.Tensor,
                    full_gradient: Optional[Tensors]) -> Tuple[Tensors, Tensors]:
    del x, y, c_server, c_client, steps, learning_rate, full_gradient
    return [], []

  def server(self, x: Tensors, control: Tensors, mean_update: Tensors, mean_extra: Tensors,
             clients: tf.Tensor, server_learning_rate: tf.Tensor) -> Tuple[Tensors, Tensors]:
    del mean_extra, clients
    return self.optimizer.step(x, mean_update, control, server_learning_rate)


class _GlobalShapedControl:
  """SCAFFOLD's `c` and FedDyn's `h`: one array per global variable, from zero."""

  def control_specs(self, specs: Specs) -> List[tf.TensorSpec]:
    return list(specs)

  def initial_control(self, specs: Specs) -> Tensors:
    return [tf.zeros(s.shape, s.dtype) for s in specs]


class Scaffold(_GlobalShapedControl):
  """SCAFFOLD, option II (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
  Federated Learning", ICML 2020, Algorithm 1).

  Server control `c`, client control `c_i` (both start at 0). Client step:
  `w <- w - eta (g(w) - c_i + c)`. After K steps: `c_i+ = c_i - c + (x - y) / (K eta)`;
  the client sends `x - y` and `c_i+ - c_i` (twice FedAvg's upload, and receives
  `x` and `c`, twice its download) and keeps `c_i+`. Server, over the clients S
  (an unweighted mean, as in the paper):
  `x <- x - eta_g mean_S(x - y)` and `c <- c + (|S| / N) mean_S(c_i+ - c_i)`.
  """

  name = 'scaffold'
  uniform = True
  client_state = True
  server_state = True
  uploads = 2
  broadcast_control = True
  full_gradient = False

  def __init__(self, num_clients: int) -> None:
    self.num_clients = int(num_clients)

  def gradient(self, g: tf.Tensor, w: tf.Variable, x: tf.Tensor, c_server: MaybeTensor,
               c_client: MaybeTensor) -> tf.Tensor:
    del w, x
    return g - c_client + c_server

  def client_finish(self, x: Tensors, y: Tensors, c_server: Sequence[MaybeTensor],
                    c_client: Sequence[MaybeTensor], steps: tf.Tensor, learning_rate: tf.Tensor,
                    full_gradient: Optional[Tensors]) -> Tuple[Tensors, Tensors]:
    del full_gradient
    scale = tf.math.divide_no_nan(1.0, tf.cast(steps, tf.float32) * learning_rate)
    new = [tf.where(steps > 0, ci - c + (xi - yi) * scale, ci)
           for xi, yi, c, ci in zip(x, y, c_server, c_client)]
    return [n - ci for n, ci in zip(new, c_client)], new

  def server(self, x: Tensors, control: Tensors, mean_update: Tensors, mean_extra: Tensors,
             clients: tf.Tensor, server_learning_rate: tf.Tensor) -> Tuple[Tensors, Tensors]:
    share = tf.cast(clients, tf.float32) / float(self.num_clients)
    return ([xi - server_learning_rate * u for xi, u in zip(x, mean_update)],
            [c + share * d for c, d in zip(control, mean_extra)])


class FedDyn(_GlobalShapedControl):
  """FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021,
  Algorithm 1).

  Client state `g_k` (the gradient state, from 0), server state `h` (from 0). The
  client minimises `F_k(w) - <g_k, w> + alpha/2 ||w - x||^2` by its local steps, so
  each gradient gets `-g_k + alpha (w - x)`; then `g_k <- g_k - alpha (y - x)`.
  Server, over the clients S (unweighted, as in the paper):
  `h <- h - alpha (|S| / N) mean_S(y - x)` and `x <- mean_S(y) - h / alpha`.
  The server learning rate does not enter (the paper has none).
  """

  name = 'feddyn'
  uniform = True
  client_state = True
  server_state = True
  uploads = 1
  broadcast_control = False
  full_gradient = False

  def __init__(self, alpha: float, num_clients: int) -> None:
    self.alpha, self.num_clients = float(alpha), int(num_clients)

  def gradient(self, g: tf.Tensor, w: tf.Variable, x: tf.Tensor, c_server: MaybeTensor,
               c_client: MaybeTensor) -> tf.Tensor:
    del c_server
    return g - c_client + self.alpha * (w - x)

  def client_finish(self, x: Tensors, y: Tensors, c_server: Sequence[MaybeTensor],
                    c_client: Sequence[MaybeTensor], steps: tf.Tensor, learning_rate: tf.Tensor,
                    full_gradient: Optional[Tensors]) -> Tuple[Tensors, Tensors]:
    del c_server, steps, learning_rate, full_gradient
    return [], [gk - self.alpha * (yi - xi) for xi, yi, gk in zip(x, y, c_client)]

  def server(self, x: Tensors, control: Tensors, mean_update: Tensors, mean_extra: Tensors,
             clients: tf.Tensor, server_learning_rate: tf.Tensor) -> Tuple[Tensors, Tensors]:
    del mean_extra, server_learning_rate
    share = tf.cast(clients, tf.float32) / float(self.num_clients)
    # mean_S(y - x) = -mean_update.
    h = [hi + self.alpha * share * u for hi, u in zip(control, mean_update)]
    return [xi - u - hi / self.alpha for xi, u, hi in zip(x, mean_update, h)], h


class MimeLite(_GlobalShapedControl):
  """MIME-lite with SGD momentum (Karimireddy et al., "Breaking the centralized barrier for
  cross-device federated learning", NeurIPS 2021, MimeLite).

  Server momentum `a` (from 0), momentum `beta`. Clients receive `x` and `a`; each local step
  is `w <- w - eta (beta a + g(w))` with `a` fixed during the round. Besides `x - y` each client
  sends its full-batch gradient at `x`, `f_k` (the example-weighted mean of its minibatch
  gradients at `x`): twice FedAvg's upload and download. Server, with example-weighted means
  over the clients S: `x <- x - eta_g mean_S(x - y)` and `a <- beta a + mean_S(f_k)`.
  """

  name = 'mimelite'
  uniform = False
  client_state = False
  server_state = True
  uploads = 2
  broadcast_control = True
  full_gradient = True

  def __init__(self, momentum: float) -> None:
    self.beta = float(momentum)

  def gradient(self, g: tf.Tensor, w: tf.Variable, x: tf.Tensor, c_server: MaybeTensor,
               c_client: MaybeTensor) -> tf.Tensor:
    del w, x, c_client
    return g + self.beta * c_server

  def client_finish(self, x: Tensors, y: Tensors, c_server: Sequence[MaybeTensor],
                    c_client: Sequence[MaybeTensor], steps: tf.Tensor, learning_rate: tf.Tensor,
                    full_gradient: Optional[Tensors]) -> Tuple[Tensors, Tensors]:
    del x, y, c_server, c_client, steps, learning_rate
    return list(full_gradient), []

  def server(self, x: Tensors, control: Tensors, mean_update: Tensors, mean_extra: Tensors,
             clients: tf.Tensor, server_learning_rate: tf.Tensor) -> Tuple[Tensors, Tensors]:
    del clients
    return ([xi - server_learning_rate * u for xi, u in zip(x, mean_update)],
            [self.beta * a + f for a, f in zip(control, mean_extra)])


def build(settings: settings_lib.RoundSettings) -> 'Algorithm':
  """The algorithm of `settings` (a `fedpara_tff.settings.RoundSettings`, which checked them):
  FedAvg / FedProx with their server optimizer, SCAFFOLD, FedDyn or MIME-lite."""
  name = settings.base_algorithm
  if name in ('fedavg', 'fedprox'):
    return FedAvg(settings.proximal_strength, ServerOptimizer(
        settings.server_optimizer, settings.server_momentum, settings.server_beta_2))
  if name == 'scaffold':
    return Scaffold(settings.num_clients)
  if name == 'mimelite':
    return MimeLite(settings.client_momentum)
  return FedDyn(settings.feddyn_alpha, settings.num_clients)


# Every algorithm of the shared round: the interface `client_work` and `stateful_round` use.
Algorithm = Union[FedAvg, Scaffold, FedDyn, MimeLite]
