"""Frozen attrs classes that ``torch.compile`` can build inside a compiled forward.

attrs' generated ``__init__`` of a frozen class (and of any class with ``on_setattr`` hooks) sets
its fields through ``object.__setattr__.__get__(self)``, which dynamo in torch 2.14 cannot trace
(``InternalTorchDynamoError: ... 'TorchInGraphFunctionVariable' has no attribute
'tp_descr_get_impl'``), while it traces ``object.__setattr__(self, name, value)``, as frozen
dataclasses use. :func:`traceable` swaps the one for the other in the class's generated
``__init__``: the instances stay frozen and their validators still run.
"""

import functools
from typing import Any, TypeVar

__all__ = ["traceable"]

T = TypeVar("T", bound=type)

#: The name attrs' generated ``__init__`` looks its field setter up by (attrs 26.1; should it
#: change, tests/test_compile_model.py fails rather than this passing silently in training).
_SETTER_FACTORY = "_cached_setattr_get"


def _bound_object_setattr(instance: Any) -> functools.partial:
    return functools.partial(object.__setattr__, instance)


def traceable(cls: T) -> T:
    """Class decorator, outside ``@attrs.frozen``: build instances with a setter dynamo traces.

    attrs compiles each class's ``__init__`` with globals of its own, so this touches ``cls``
    alone. A class whose ``__init__`` does not use the setter is returned unchanged.
    """
    init_globals = cls.__init__.__globals__
    if _SETTER_FACTORY in init_globals:
        init_globals[_SETTER_FACTORY] = _bound_object_setattr
    return cls
