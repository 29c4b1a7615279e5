"""The public API follows TFF's conventions: typed (PEP 561 `py.typed` in both packages), and
the builders take keyword-only arguments after their natural positional ones."""

import inspect
import pathlib

import pytest

import fedpara_tff
import keras_layers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _public(module):
  for name in sorted(dir(module)):
    obj = getattr(module, name)
    if name.startswith('_') or inspect.ismodule(obj):
      continue
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
      yield f'{module.__name__}.{name}.__init__', obj.__init__
    elif inspect.isfunction(obj):
      yield f'{module.__name__}.{name}', obj


PUBLIC = dict(list(_public(keras_layers)) + list(_public(fedpara_tff)))


@pytest.mark.parametrize('name', sorted(PUBLIC))
def test_every_public_callable_is_annotated(name):
  function = PUBLIC[name]
  signature = inspect.signature(function)
  missing = [p for p, param in signature.parameters.items()
             if p != 'self' and param.annotation is inspect.Parameter.empty]
  assert not missing, f'{name}: parameters without a type: {missing}'
  if not name.endswith('__init__'):
    assert signature.return_annotation is not inspect.Signature.empty, f'{name}: no return type'


# Builder -> the arguments that may be positional (the rest are keyword-only).
POSITIONAL = {
    'build_fedpara_process': ['model_fn'],
    'factor_aggregator': ['inner'],
    'travel_mask': ['keras_model', 'local_layers'],
    'keras_model_fn_to_tff': ['keras_model_fn', 'input_spec'],
    'build_pfedpara_driver': ['keras_model_fn', 'element_spec', 'settings'],
    'build_fedavg_driver': ['keras_model_fn', 'element_spec', 'settings'],
    'build_local_only_driver': ['keras_model_fn', 'element_spec', 'settings'],
    'build_fedper_driver': ['keras_model_fn', 'element_spec', 'local_layers', 'settings'],
    'build_pfedpara_process': ['keras_model_fn', 'element_spec', 'settings'],
    'build_local_only_process': ['keras_model_fn', 'element_spec', 'settings'],
    'build_fedper_process': ['keras_model_fn', 'element_spec', 'local_layers', 'settings'],
}


@pytest.mark.parametrize('name', sorted(POSITIONAL))
def test_builders_take_keyword_only_options(name):
  parameters = inspect.signature(getattr(fedpara_tff, name)).parameters.values()
  positional = [p.name for p in parameters
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  assert positional == POSITIONAL[name]
  # **kwargs only where they are forwarded whole (to RoundSettings).
  var_keyword = [p.name for p in parameters if p.kind is p.VAR_KEYWORD]
  assert var_keyword in ([], ['settings_fields'])


def test_convert_takes_its_rank_options_by_keyword():
  parameters = inspect.signature(keras_layers.convert).parameters
  assert [p for p, v in parameters.items() if v.kind is v.POSITIONAL_OR_KEYWORD] == [
      'model', 'parameterization']
  with pytest.raises(TypeError):
    keras_layers.convert(None, 'fedpara', 0.1)  # pylint: disable=too-many-function-args


def test_both_packages_ship_py_typed():
  for package in ('keras_layers', 'fedpara_tff'):
    assert (ROOT / package / 'py.typed').exists()
