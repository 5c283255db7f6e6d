"""eva8_utils: train and understand CIFAR-10-sized image classifiers in PyTorch.

The short public API, in the order a notebook uses it::

    from eva8_utils import (TrainConfig, load_dataset, make_loaders, model_from_config,
                            optimizer_from_config, schedule_from_config, fit, compute_cams)

Nothing happens at import: no device is touched and optional dependencies
(pytorch-grad-cam, torchinfo) load only when used.
"""

__version__ = "0.1.0"

from .config import RECIPES, TrainConfig, build_config  # noqa: E402
from .data import DeviceLoader, Splits, load_dataset, load_folder, make_loaders, make_shapes  # noqa: E402
from .engine import (Schedule, evaluate, fit, make_optimizer, optimizer_from_config, predict,  # noqa: E402
                     schedule_from_config, train_one_epoch)
from .errors import CheckpointError, ConfigError, DataError, UserError  # noqa: E402
from .models import MODELS, create_model, model_from_config, prepare_model, register_model  # noqa: E402
from .utils import get_device, seed_everything, setup_logging  # noqa: E402


def compute_cams(*args, **kwargs):
    """See :func:`eva8_utils.cam.compute_cams` (pytorch-grad-cam is imported on first use)."""
    from .cam import compute_cams as _compute_cams

    return _compute_cams(*args, **kwargs)


__all__ = [
    "__version__", "TrainConfig", "build_config", "RECIPES", "Splits", "DeviceLoader", "load_dataset",
    "load_folder", "make_shapes", "make_loaders", "MODELS", "create_model", "model_from_config",
    "prepare_model", "register_model", "make_optimizer", "optimizer_from_config", "Schedule", "schedule_from_config",
    "train_one_epoch", "evaluate", "predict", "fit", "compute_cams", "get_device", "seed_everything",
    "setup_logging", "UserError", "ConfigError", "DataError", "CheckpointError",
]
