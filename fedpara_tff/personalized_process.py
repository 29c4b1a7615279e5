"""The personalised round in TFF's shape: a template whose client state is an argument.

A `tff.learning.templates.LearningProcess` cannot carry per-client state in TFF 0.87
(its client work's state is SERVER-placed). `PersonalizedProcess` is the
`tff.templates.IterativeProcess` of the personalised round (pFedPara, FedPer,
local-only) with the sampled clients' state passed in and returned:

    initialize:           ( -> S@SERVER)
    next:                 (<S@SERVER, {D*}@CLIENTS, {L}@CLIENTS>
                           -> <state=S@SERVER, client_states={L}@CLIENTS, metrics=M@SERVER>)
    get_model_weights:    (S -> ModelWeights(trainable=G, non_trainable=<>))
    initial_client_state: ( -> L)

`S` is the server state (`global_weights`, `aggregator`, `round_num`), `D` a
client's batches, `L` a client's local variables (pFedPara's `*2_local`
factors, FedPer's local layers), `G` the global variables, `M` the round's
metrics (`train`, `aggregator`, and `aggregation_error` for a factorised model). `next` returns a
`PersonalizedOutput`: `output.state` and `output.metrics` as from TFF's `LearningProcessOutput`,
`output.client_states` besides. Whoever drives it keeps each client's `L`
between rounds: `fedpara_tff.PersonalizedDriver` does so in a client-state
store, a program loop can keep a dict. Clients' results come back in the order
given under TFF's local and default contexts; the driver additionally handles
the remote-worker context, which returns them in the order they finish.
"""

from typing import Any, NamedTuple

import tensorflow_federated as tff


class PersonalizedOutput(NamedTuple):
  """What `PersonalizedProcess.next` returns: the fields of TFF's
  `tff.learning.templates.LearningProcessOutput` (`state`, `metrics`) and the sampled clients'
  new local states; it unpacks as `(state, client_states, metrics)`."""
  state: Any
  client_states: Any
  metrics: Any


class PersonalizedProcess(tff.templates.IterativeProcess):
  """`tff.templates.IterativeProcess` of a personalised round; see the module docstring.

  Args:
    initialize_fn: no-argument federated computation returning the server state.
    next_fn: federated computation `(state, client_data, client_states) ->
      (state, client_states, metrics)`.
    get_model_weights_fn: TF computation from the (unplaced) server state to
      `tff.learning.models.ModelWeights` of the global variables.
    initial_client_state_fn: no-argument TF computation returning a new
      client's local variables.

  Raises:
    TypeError: `get_model_weights_fn` does not take the server state, or
      `next_fn` does not take and return the client state
      `initial_client_state_fn` returns.
  """

  def __init__(self, initialize_fn: tff.Computation, next_fn: tff.Computation,
               get_model_weights_fn: tff.Computation, initial_client_state_fn: tff.Computation):
    super().__init__(initialize_fn, next_fn)
    state_type = initialize_fn.type_signature.result.member
    if not get_model_weights_fn.type_signature.parameter.is_assignable_from(state_type):
      raise TypeError(f'get_model_weights_fn must take the server state {state_type}; it takes '
                      f'{get_model_weights_fn.type_signature.parameter}.')
    client_state_type = initial_client_state_fn.type_signature.result
    parameter, result = next_fn.type_signature.parameter, next_fn.type_signature.result
    if (len(parameter) != 3 or not parameter[2].member.is_assignable_from(client_state_type)
        or not result[1].member.is_assignable_from(client_state_type)):
      raise TypeError(f'next_fn must take and return the client state {client_state_type} as '
                      f'its third argument and second result; its type is '
                      f'{next_fn.type_signature}.')
    self._get_model_weights = get_model_weights_fn
    self._initial_client_state = initial_client_state_fn

  @property
  def get_model_weights(self):
    """TF computation: server state -> `ModelWeights` of the global variables."""
    return self._get_model_weights

  @property
  def initial_client_state(self):
    """TF computation: a never-sampled client's local variables (TFF's own initialisation)."""
    return self._initial_client_state
