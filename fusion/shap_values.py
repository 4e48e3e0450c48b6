"""The import path the README documents for SHAP (``clinfuse.fusion.shap_values``); the code is in
:mod:`clinfuse.fusion.explain.shap`."""

from .explain.shap import attention_shap_agreement, shap_values

__all__ = ["attention_shap_agreement", "shap_values"]
