"""Everything that depends on TFF 0.87's internals, in one place: private module paths and
private attributes (docs/DESIGN.md, "TFF runtime facts").

TFF 0.87's public API builds execution contexts only for its own local C++ worker and for plain
gRPC channels it opens itself; a context over our own channel (a local worker reachable from
this process only, mutual TLS to remote workers, counting each worker's share) needs its
executor, compiler and transforms, which live under `tensorflow_federated.python`. Its
`ServiceManager` (the local worker's process) and `EncodedSumFactory`'s encoder are reachable
only through private attributes. A TFF upgrade changes this module and no other.

Importing this module loads TFF; `fedpara_tff.runtime`, which must not, imports it only where it
already found TFF loaded.
"""

import inspect
import sys
from typing import Any, Optional

# pylint: disable=g-direct-tensorflow-import
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import executor_factory
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements
# pylint: enable=g-direct-tensorflow-import

CLIENTS = placements.CLIENTS
AsyncExecutionContext = async_execution_context.AsyncExecutionContext
SyncExecutionContext = sync_execution_context.SyncExecutionContext
ExecutorFactory = executor_factory.ExecutorFactory
ResourceManagingExecutorFactory = python_executor_stacks.ResourceManagingExecutorFactory
RemoteExecutor = remote_executor.RemoteExecutor
RemoteExecutorGrpcStub = remote_executor_grpc_stub.RemoteExecutorGrpcStub


def native_pipeline() -> dict:
  """The compiler and argument transforms of TFF's native local context, as keyword arguments of
  an execution context: a context built with them runs computations as TFF's own does."""
  return dict(compiler_fn=compiler.desugar_and_transform_to_native,
              transform_args=tensorflow_computation.transform_args,
              transform_result=tensorflow_computation.transform_result)


def set_default_context(context: Any) -> None:
  """Makes `context` the default of TFF's context stack (what every later computation uses)."""
  context_stack_impl.context_stack.set_default_context(context)


def service_manager(context: Any = None) -> Optional[Any]:
  """The `ServiceManager` of `context` (default: the installed TFF execution context), or None
  (the context is not TFF's local C++ one, e.g. remote workers).

  TFF 0.87 does not expose it: `ServiceManager` is a class local to
  `executor_factory.local_cpp_executor_factory`, and its one instance is held only by the
  closure of the executor-stack function of the context's executor factory; this follows that
  reference.
  """
  if context is None:
    context = sys.modules['tensorflow_federated'].framework.get_context_stack().current
  stack_fn = getattr(getattr(context, '_executor_factory', None), '_executor_stack_fn', None)
  if stack_fn is None:
    return None
  manager = inspect.getclosurevars(stack_fn).nonlocals.get('service_manager')
  return manager if hasattr(manager, '_process') else None


def is_native_local(context: Any) -> bool:
  """Whether `context` is TFF's native local C++ context (the one TFF sets at import, or
  `tff.backends.native.set_sync_local_cpp_execution_context()`'s): a `ServiceManager` and the
  native compiler."""
  pipeline = getattr(getattr(context, '_async_context', None), '_compiler_pipeline', None)
  return (service_manager(context) is not None
          and getattr(pipeline, '_compiler_fn', None) is compiler.desugar_and_transform_to_native)


def encoder_for(encoded_factory: Any, spec: Any) -> Any:
  """The encoder `tff.aggregators.EncodedSumFactory` builds for one `tf.TensorSpec`."""
  return encoded_factory._encoder_fn(spec)  # pylint: disable=protected-access
