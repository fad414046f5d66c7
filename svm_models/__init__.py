"""svm_models: SVMamba, VMamba and QKFormer built on svm_kernels.

``create_model(name, num_classes=..., img_size=..., **overrides)`` builds a registered model;
``list_models()`` names them. Importing the model modules below registers them.
``svm_models.accounting`` (fvcore) is imported on first use.
"""

from . import qkformer, svmamba, vmamba  # noqa: F401  (importing registers the models)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]


def __getattr__(name: str):
    # Lazy: `svm_models.accounting.profile(...)` works after `import svm_models` without making
    # every import of the models pay for fvcore.
    if name == "accounting":
        import importlib

        return importlib.import_module(".accounting", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
