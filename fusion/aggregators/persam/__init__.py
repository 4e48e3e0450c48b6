"""PersAM, the personalised MIL aggregator: the model (:mod:`.model`), its group-balanced encoder
(:mod:`.encoder`), its modality logit terms and reference tokens (:mod:`.reference`) and its exported
attention (:mod:`.explanation`). Importing the package registers ``"persam"``."""

from .model import PersAM

__all__ = ["PersAM"]
