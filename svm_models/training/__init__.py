"""Training, evaluation and prediction machinery behind train.py, test.py and predict.py.

* :mod:`.config` -- the YAML schema (:data:`SCHEMA`), :func:`load_config`, :class:`ConfigError`.
* :mod:`.engine` -- :func:`fit` (AdamW, warmup + cosine, label smoothing, mixup, EMA, clipping,
  bf16 autocast on CUDA, DDP), :func:`evaluate`, :func:`build_model`.
* :mod:`.checkpoint` -- atomic saves, ``weights_only`` loads, flexible weight files.
* :mod:`.rundir` -- claiming ``output_dir/task_name``: write check, lock, no silent overwrite.
* :mod:`.runtime` -- the device and the CPU thread count.
* :mod:`.cli` -- the scripts' shared arguments (``--opts`` and friends) and error convention.
* :mod:`.evaluation` -- the test split's accuracy plus the accounting report.
* :mod:`.inference` -- predicting a folder of images.
"""

from .checkpoint import atomic_save, extract_state_dict, load_weights
from .config import SCHEMA, ConfigError, load_config, run_dir, validate
from .engine import NonFiniteLossError, build_model, evaluate, fit

__all__ = [
    "SCHEMA",
    "ConfigError",
    "NonFiniteLossError",
    "atomic_save",
    "build_model",
    "evaluate",
    "extract_state_dict",
    "fit",
    "load_config",
    "load_weights",
    "run_dir",
    "validate",
]
