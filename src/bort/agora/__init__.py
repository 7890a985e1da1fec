"""Agora: fine-tuning with scarce data by generating, labelling and adding points near the model's mistakes."""

import sys
import types


class _Package(types.ModuleType):
    """Importing this package sets `bort.agora` to it, hiding the API function: so the package calls it."""

    def __call__(self, *args, **kwargs):
        from bort.api import agora

        return agora(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
