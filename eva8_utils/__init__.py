"""eva8_utils: train and understand CIFAR-10-sized image classifiers in PyTorch.

The short public API, in the order a notebook uses it::

    import eva8_utils as E

    cfg = E.build_config(flags=dict(dataset="shapes", model="fastnet", epochs=3))
    exp = E.build(cfg)                       # data, model, optimizer, schedule: seeded
    run = E.RunDir("runs/demo")              # optional: the run folder
    result = E.train(exp, run)               # fit, checkpoints, history.csv, metrics.json
    an = E.Analysis(exp, run, result)        # curves, misclassified, GradCAM, confusion matrix
    an.run_all(); an.finish()                # report.md; metrics.json says "done"

    model, ckpt = E.load_model("runs/demo/checkpoints/best.pt")
    rows = E.predict_images("runs/demo/checkpoints/best.pt", ["cat.png"], topk=3)

Nothing happens at import: no device is touched and optional dependencies
(pytorch-grad-cam, torchinfo, tensorboard, gradio) load only when used.
"""

__version__ = "0.4.0"

from .analysis import Analysis  # noqa: E402
from .checkpoint import load_model  # noqa: E402
from .config import RECIPES, TrainConfig, build_config  # noqa: E402
from .data import DeviceLoader, Splits, load_dataset, load_folder, make_loaders, make_shapes  # noqa: E402
from .engine import (Callback, Schedule, Step, add_epoch, choose_precision, evaluate, fit,  # noqa: E402
                     make_optimizer, new_history, predict, test_line, train_one_epoch)
from .errors import CheckpointError, ConfigError, DataError, UserError  # noqa: E402
from .experiment import Experiment, build, run_experiment, train  # noqa: E402
from .models import MODELS, create_model, prepare_model, register_model  # noqa: E402
from .predict import predict_images  # noqa: E402
from .rundir import RunDir  # noqa: E402
from .utils import get_device, seed_everything, setup_logging  # noqa: E402


def compute_cams(*args, **kwargs):
    """See :func:`eva8_utils.cam.compute_cams` (pytorch-grad-cam is imported on first use)."""
    from .cam import compute_cams as _compute_cams

    return _compute_cams(*args, **kwargs)


__all__ = [
    "__version__", "TrainConfig", "build_config", "RECIPES", "Experiment", "build", "train", "run_experiment",
    "RunDir", "Analysis", "Splits", "DeviceLoader", "load_dataset", "load_folder", "make_shapes", "make_loaders",
    "MODELS", "create_model", "prepare_model", "register_model", "make_optimizer", "Schedule", "choose_precision",
    "train_one_epoch", "evaluate", "predict", "fit", "Step", "Callback", "new_history", "add_epoch", "test_line", "compute_cams", "load_model", "predict_images",
    "get_device", "seed_everything", "setup_logging", "UserError", "ConfigError", "DataError", "CheckpointError",
]
