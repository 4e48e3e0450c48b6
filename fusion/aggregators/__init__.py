"""The registered aggregators. Importing this package registers every one of them in ``AGGREGATORS``.

Each module below adds itself with ``@AGGREGATORS.register(name)``; add one import line per new module.
"""
from . import abmil, concat, cross_attention, hierarchical, self_attention  # noqa: F401
from . import persam  # noqa: F401
