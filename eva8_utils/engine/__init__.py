"""Training engine: the mechanism only. Everything is passed in and results come back as
dicts; it knows no config object, no folder layout and no particular model. Whoever
calls :func:`fit` (the CLI, the notebook, a benchmark, a student's own loop) adds the
work it wants as callbacks. Nothing here prints (log lines go through ``logging``).

- :mod:`.loop`: the step, the epoch and fit (the epoch loop plus events)
- :mod:`.state`: the loop's state and the callback events
- :mod:`.callbacks`: L1, clipping, frozen parameters, lookahead, EMA, divergence, bar, ETA
- :mod:`.optim`: parameter groups, optimizers, lookahead's slow weights
- :mod:`.schedule`: LR schedules
- :mod:`.precision`: the precision rule, GradScaler, autocast
- :mod:`.evaluate`: test loss/accuracy, TTA, predictions
"""

from .callbacks import (DIVERGENCE_HINT, DivergenceMonitor, EMAWeights, EtaLogger, FreezeParameters, GradClip,
                        L1Penalty, LookaheadStep, ProgressBar, StopWhen, WatchDivergence, l1_parameters, make_ema)
from .evaluate import evaluate, predict, test_line, tta_logits
from .loop import HISTORY_COLUMNS, Resume, add_epoch, Step, fit, new_history, run_epoch, train_one_epoch, train_step
from .optim import (LOOKAHEAD_START_EPOCHS, OPTIMIZERS, GroupHints, Lookahead, MuonSGD, classifier_head, make_optimizer,
                    newton_schulz, param_groups, set_lr)
from .precision import Precision, autocast, choose_precision, cpu_has_fast_bf16, fast_bf16, make_scaler
from .schedule import SCHEDULERS, Schedule, ScheduleSettings, schedule_depends_on_length
from .state import EVENTS, Callback, CallbackList, TrainState, get_rng_state, set_rng_state, unwrap, wraps_ddp

__all__ = [
    "DIVERGENCE_HINT", "DivergenceMonitor", "EMAWeights", "EtaLogger", "FreezeParameters", "GradClip", "L1Penalty",
    "LookaheadStep", "ProgressBar", "StopWhen", "WatchDivergence", "l1_parameters", "make_ema",
    "evaluate", "predict", "test_line", "tta_logits",
    "HISTORY_COLUMNS", "Resume", "add_epoch", "Step", "fit", "new_history", "run_epoch", "train_one_epoch", "train_step",
    "LOOKAHEAD_START_EPOCHS", "OPTIMIZERS", "GroupHints", "Lookahead", "MuonSGD", "classifier_head", "make_optimizer",
    "newton_schulz", "param_groups", "set_lr",
    "Precision", "autocast", "choose_precision", "cpu_has_fast_bf16", "fast_bf16", "make_scaler",
    "SCHEDULERS", "Schedule", "ScheduleSettings", "schedule_depends_on_length",
    "EVENTS", "Callback", "CallbackList", "TrainState", "get_rng_state", "set_rng_state", "unwrap", "wraps_ddp",
]
