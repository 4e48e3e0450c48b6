"""PersAM, the personalised MIL aggregator: the model (:mod:`.model`), its group-balanced encoder
(:mod:`.encoder`), its modality logit terms and reference tokens (:mod:`.reference`) and its exported
attention (:mod:`.explanation`) and its per-sample figure (:mod:`.figure`). Importing the package registers
the aggregator ``"persam"`` and its sample figure."""

from . import figure  # noqa: F401  (registers the sample figure)
from .model import PersAM

__all__ = ["PersAM"]
