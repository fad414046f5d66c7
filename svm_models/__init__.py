"""svm_models: SVMamba, VMamba and QKFormer built on svm_kernels.

``create_model(name, num_classes=..., img_size=..., **overrides)`` builds a registered model;
``list_models()`` names them. Importing the model modules below registers them.
"""

from . import qkformer, svmamba, svmamba_para133, vmamba  # noqa: F401  (importing registers the models)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
