"""Writes S7.ipynb from the cells below, its one source: python tools/make_notebook.py

After the outputs are filled by papermill (see the notebook's intro): python tools/make_notebook.py --clean
"""

from pathlib import Path

import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = []
cells.append(md("""# S7: ResNet18 on CIFAR-10, with curves, misclassified images and GradCAM

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/eva8_utils/blob/main/S7.ipynb)

Every cell calls the `eva8_utils` package (the notebook defines no function or class), through the same
assembly and run folder as the command line: `config.yaml`, `log.txt`, `summary.txt`, `history.csv`,
`steps.csv`, `metrics.json`, checkpoints, images and `report.md`. The defaults in the parameters cell are the
assignment: ResNet18 on CIFAR-10 for 20 epochs with RandomCrop(32, padding=4), horizontal flip and a 16x16
cutout, SGD + OneCycle.

On Colab: choose a GPU runtime (Runtime > Change runtime type), then Runtime > Run all. With `USE_DRIVE = True`
(the default) the run folder lives on your Google Drive: after a disconnect, **Run all again continues the run
from its last checkpoint** (checkpoints are written at the end of every epoch and every 10 minutes inside one).
A finished run is shown again without retraining; set `OVERWRITE = True` to start it over.

The outputs saved in this file are a run of the `fast` recipe on 10,000 training images of the CIFAR-10 JPEG
copy on a 2-core CPU (the default, ResNet18 on all 50,000, wants a GPU), made with `papermill S7.ipynb S7.ipynb
-p DATASET folder -p DATA_DIR data/cifar10-jpeg -p RECIPE fast -p RUN_DIR runs/notebook-fast -y
'{"EXTRA": {"train_subset": 10000}}'` (then `python tools/make_notebook.py --clean`); Run all replaces them with your own run."""))
cells.append(code("""# Install the package when it is not importable: on Colab from GitHub (set REPO_URL to your
# fork), inside a checkout (local Jupyter, CI) the checkout itself is used. torch is never pinned.
REPO_URL = "https://github.com/OWNER/eva8_utils"
import importlib.util, os, sys
if importlib.util.find_spec("eva8_utils") is None:
    if os.path.isfile(os.path.join("eva8_utils", "__init__.py")):
        sys.path.insert(0, os.getcwd())
    else:
        %pip install -q git+{REPO_URL}"""))
params = code("""# Parameters (papermill: -p NAME VALUE). Any other TrainConfig field goes into EXTRA,
# e.g. EXTRA = {"l1": 1e-5, "scheduler": "plateau"}.
DATASET = "cifar10"          # cifar10 | folder | shapes
DATA_DIR = "./data"          # cifar10: download folder; folder: ROOT with train/ and test/
RECIPE = ""                  # "" (the assignment) | "resnet18" (the same) | "fast" | "fast_sgd"
# None: the recipe's value (no recipe: the package's default); a value given here overrides the recipe.
MODEL = None                 # resnet18 | resnet34 | custom_resnet | fastnet | vit_tiny | package.module:callable
EPOCHS = None
BATCH_SIZE = None
MAX_LR = None                # peak LR of OneCycle, or "auto" to use the LR finder's suggestion
SEED = 1
NORM = "batch"               # batch | group | layer
EMA = 0.0                    # e.g. 0.999: also evaluate an exponential moving average of the weights
MIXUP = 0.0                  # MixUp alpha (0: off)
CUTMIX = 0.0                 # CutMix alpha (0: off)
TRAIN_TRANSFORM = ""         # your per-image pipeline, "module:callable" (e.g. an A.Compose in mytransforms.py)
TEST_TRANSFORM = ""          # ... for the test split ("": the images as they are, normalised)
RUN_LR_FINDER = False
CAM_METHOD = "gradcam"       # gradcam | gradcam++ | xgradcam | layercam | eigencam | scorecam
CAM_LAYER = ""               # empty: the model's default layer (a map of at least 7x7)
NUM_IMAGES = 10
TENSORBOARD = False          # also write TensorBoard logs into the run folder
RUN_DIR = "runs/notebook"    # on Colab with USE_DRIVE: MyDrive/eva8_utils/runs/notebook
USE_DRIVE = True             # Colab only (ignored elsewhere): keep the run folder on Google Drive
OVERWRITE = False            # True: start the run in RUN_DIR over (otherwise it is resumed or shown)
SAVE_README_IMAGES = False   # also copy the figures to image/README/
RUN_NORM_SWEEP = False       # the BN/GN/LN comparison at the end (three more runs)
SWEEP_EPOCHS = 5
EXTRA = {}""")
params.metadata["tags"] = ["parameters"]
cells.append(params)
cells.append(md("## Setup: config, run folder, device and precision"))
cells.append(code("""%matplotlib inline
from IPython.display import display

import eva8_utils as E
from eva8_utils import viz
from eva8_utils.colab import one_line_errors, run_folder

E.setup_logging()  # the package logs the per-epoch lines; show them here
one_line_errors()  # a mistake in the parameters: one line that says what to do, not a traceback
cfg = E.build_config(flags=dict(
    recipe=RECIPE, dataset=DATASET, data_dir=DATA_DIR, model=MODEL, epochs=EPOCHS, batch_size=BATCH_SIZE,
    lr=MAX_LR, seed=SEED, norm=NORM, ema=EMA, mixup=MIXUP, cutmix=CUTMIX, cam_method=CAM_METHOD,
    cam_layer=CAM_LAYER, num_images=NUM_IMAGES, lr_find=RUN_LR_FINDER, tensorboard=TENSORBOARD,
    train_transform=TRAIN_TRANSFORM, test_transform=TEST_TRANSFORM, **EXTRA))
run = E.RunDir(run_folder(RUN_DIR, USE_DRIVE))
cfg = run.open_for(cfg, overwrite=OVERWRITE)   # never replaces a run silently
print("run folder:", run.path, "|", run.mode)
print(f"recipe: {cfg.recipe or 'none'} | model {cfg.model} | {cfg.epochs} epochs | batch {cfg.batch_size} | "
      f"{cfg.optimizer} LR {cfg.lr} ({cfg.scheduler})")
exp = E.Experiment(cfg)
print("eva8_utils", E.__version__, "| device:", E.utils.device_description(exp.device))
print("precision:", exp.precision.describe())"""))
cells.append(md("## Data: uint8 on the device, augmented per batch there (or your own pipeline in DataLoader workers)"))
cells.append(code("""splits = exp.load_data()
print(f"{splits.name}: {len(splits.y_train)} train / {len(splits.y_test)} test images, "
      f"{splits.image_size}x{splits.image_size}, classes {splits.classes}")
print("per-channel mean", [round(v, 4) for v in splits.mean], "std", [round(v, 4) for v in splits.std])
print(exp.train_loader.description)
exp.train_loader.set_epoch(1)
x, y = next(iter(exp.train_loader))
display(viz.plot_samples(x[:32].cpu(), (y.argmax(1) if y.dim() == 2 else y)[:32].cpu(), splits.classes,
                         splits.mean, splits.std))"""))
cells.append(md("## Model and its summary (torchinfo)"))
cells.append(code("""model = exp.build_model()   # seeded, built, initialised from the data, on the device
print(exp.summary())"""))
cells.append(md("## LR range test (optional: `RUN_LR_FINDER = True` or `MAX_LR = 'auto'`)"))
cells.append(code("""finder = exp.find_lr()   # skipped when the run is resumed or finished
if finder is not None:
    print(finder.describe())
    display(viz.plot_lr_finder(finder.lrs, finder.losses, finder.suggestion))
else:
    print("LR finder skipped; LR", exp.cfg.lr)"""))
cells.append(md("""## Training

The same `train` as the CLI: it resumes an unfinished run at its last checkpoint (the exact batch when the
checkpoint was taken inside an epoch) and only loads a finished one. With `TENSORBOARD = True`, watch it with
`%load_ext tensorboard` and `%tensorboard --logdir {run.path}/tensorboard` in a new cell."""))
cells.append(code("""exp.build_optimizer()
result = E.train(exp, run)
print(f"train time {result['train_time_s']:.0f} s ({result['train_time_s'] / max(len(result['epoch_times']), 1):.1f} s/epoch)")"""))
cells.append(md("## Loss and accuracy curves"))
cells.append(code("""an = E.Analysis(exp, run, result)   # on a finished run: shows the saved pictures
display(an.curves())"""))
cells.append(md("## 10 misclassified test images (most confident mistakes first)"))
cells.append(code("""display(an.misclassified())
print(f"{an.misclassified_set()['count'] if not an.saved else run.read_metrics().get('misclassified_count')} "
      f"test images are misclassified (weights: {an.weights})")"""))
cells.append(md("## GradCAM on them: the predicted class and the true class"))
cells.append(code("""display(an.gradcam())"""))
cells.append(md("## Confusion matrix and per-class accuracy (over every test image)"))
cells.append(code("""display(an.confusion_matrix(), an.per_class_accuracy())"""))
cells.append(md("""## Do the CAMs point at what the model uses?

ROAD (most relevant first): the CAM's top 20% pixels are replaced and the class probability measured again,
against the same for a random map; on the shapes dataset also the pointing game against three baselines."""))
cells.append(code("""for key, value in an.cam_checks().items():
    print(f"{key:28s} {value}")"""))
cells.append(md("## Save: the run folder is complete (`metrics.json` says done, `report.md`)"))
cells.append(code("""an.samples(), an.lr_finder()
metrics = an.finish()
if SAVE_README_IMAGES:
    run.copy_images("image/README")
print(f"{metrics['status']}: test accuracy {metrics['test_acc']:.2f}%",
      f"({metrics['test_acc_tta']:.2f}% with TTA)" if "test_acc_tta" in metrics else "", "| run folder", run.path)"""))
cells.append(md("""## Optional: BatchNorm vs GroupNorm vs LayerNorm (`RUN_NORM_SWEEP = True`)

The next assignment's comparison: the same network and recipe with each normalisation, then the test loss and
accuracy of all three together and 10 misclassified images for each. Each run has its own folder under
`RUN_DIR-norms/`; a sweep started again skips finished runs and resumes an unfinished one. The command line does
the same: `eva8 sweep --out runs/norms --norm batch group layer ...`."""))
cells.append(code("""if RUN_NORM_SWEEP:
    from eva8_utils.compare import run_sweep
    sweep = run_sweep(cfg.replace(epochs=SWEEP_EPOCHS, out="", resume=False, overwrite=False),
                      {"norm": ["batch", "group", "layer"]}, run_folder(f"{RUN_DIR}-norms", USE_DRIVE))
    display(sweep["figure"])
    print(sweep["table"])
    for grid in sweep["misclassified"].values():
        display(grid)
else:
    print("norm sweep skipped (RUN_NORM_SWEEP = False)")"""))

for i, cell in enumerate(cells):
    cell["id"] = f"cell-{i:02d}"   # stable ids: regenerating changes only what changed
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}, "accelerator": "GPU", "colab": {"provenance": []}}
NOTEBOOK = Path(__file__).resolve().parents[1] / "S7.ipynb"


def clean(path: Path = NOTEBOOK) -> None:
    """After papermill filled the outputs: drop its injected-parameters cell and its metadata, so that
    the saved notebook's parameters are the defaults above (a user's Run all must not inherit them)."""
    nb = nbf.read(str(path), as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
        if not c.metadata.get("tags", True):
            del c.metadata["tags"]
    nb.metadata = dict(METADATA)
    nbf.write(nb, str(path))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--clean"]:
        clean()
    else:
        nbf.write(nbf.v4.new_notebook(cells=cells, metadata=METADATA), str(NOTEBOOK))
