"""The registered aggregators. Importing this package registers every one of them in ``AGGREGATORS``.

Each module below adds itself with ``@AGGREGATORS.register(name)``; add one import line per new module.
"""
from . import (  # noqa: F401
    abmil,
    concat,
    cross_attention,
    hierarchical,
    persam,
    self_attention,
)
