"""A demo app for a trained checkpoint (Gradio), and its export as a Hugging Face Space.

    eva8 demo --checkpoint RUN/checkpoints/best.pt [--port 7860] [--share]
    eva8 demo --checkpoint RUN/checkpoints/best.pt --export my_space/
    eva8 demo --checkpoint shared.pt --model mymodels:MyNet [--export my_space/]

Upload an image: the app shows the top-k classes as bars and the CAM overlay of the top
class, with controls for the CAM method, the layer and the overlay opacity. Images are
prepared as in training (RGB, resized to the checkpoint's size, its mean/std).

Gradio is an optional dependency (``pip install "eva8_utils[demo]"``), imported only here.
``--export DIR`` writes a folder that runs as a Space (``app.py``, ``requirements.txt``,
``README.md`` with the Space settings, ``model.pt``, and a copy of this package, so the
Space needs nothing from GitHub). A checkpoint whose model is code outside eva8_utils is
served or exported only when ``--model`` / ``--import`` name that code, and the Space gets
copies of those single-file modules only.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint, load_model
from .errors import ConfigError, UserError
from .utils import get_device, normalize

logger = logging.getLogger("eva8_utils")

SPACE_REQUIREMENTS = ["torch", "torchvision", "numpy", "pillow", "matplotlib", "PyYAML", "tqdm", "grad-cam", "gradio"]


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise UserError('eva8 demo needs Gradio: pip install "eva8_utils[demo]" (or pip install gradio)') from None
    return gr


def cam_layer_choices(model: torch.nn.Module, image_size: int, default: str) -> list[str]:
    """Layers worth a CAM: modules with a 4-D output of at least 2x2, the default first."""
    from .cam import layer_output_sizes

    names = [n for n, (h, w) in layer_output_sizes(model, image_size) if min(h, w) >= 2]
    names = list(dict.fromkeys(names))
    return [default] + [n for n in names if n != default]


def overlay(image: np.ndarray, cam: np.ndarray, opacity: float = 0.5, size: int = 256) -> np.ndarray:
    """uint8 (size, size, 3): the image with its CAM (jet colours) blended in at ``opacity``."""
    import torch.nn.functional as F
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    mixed = (1 - opacity) * (image.astype(np.float32) / 255.0) + opacity * heat
    t = torch.from_numpy(mixed).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return (t.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


class Classifier:
    """A checkpoint ready to classify PIL images (what the app calls)."""

    def __init__(self, checkpoint: str | Path, device: torch.device | str | None = None, topk: int = 5, *,
                 model: str | None = None, imports: Sequence[str] = ()):
        self.device = torch.device(device) if device is not None else get_device("auto")
        self.model, ckpt = load_model(checkpoint, model, self.device, imports=imports)
        self.classes, self.mean, self.std = list(ckpt["classes"]), ckpt["mean"], ckpt["std"]
        self.size, self.topk = int(ckpt["image_size"]), max(1, min(int(topk), len(ckpt["classes"])))
        self.name = ckpt.get("model_name", "model")
        from .models import cam_reshape_of

        ref = ckpt.get("model_ref") if isinstance(ckpt.get("model_ref"), dict) else {}
        self.reshape = cam_reshape_of(self.model, ref.get("model") if isinstance(ref.get("model"), str) else None)
        from .cam import default_cam_layer

        cfg = ckpt.get("config") or {}
        self.default_layer = cfg.get("cam_layer") or default_cam_layer(self.model, self.size)
        self.layers = cam_layer_choices(self.model, self.size, self.default_layer)

    def prepare(self, image) -> tuple[np.ndarray, torch.Tensor]:
        """PIL image -> (uint8 (H, W, 3) as the model sees it, normalised (1, 3, H, W) tensor)."""
        from .data import pil_to_array

        arr = pil_to_array(image, self.size)
        x = normalize(torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), self.mean, self.std)
        return arr, x.to(self.device)

    def __call__(self, image, method: str = "gradcam", layer: str | None = None, opacity: float = 0.5
                 ) -> tuple[dict[str, float], np.ndarray]:
        """Top-k probabilities {class: p} and the CAM overlay (uint8 image) of the top class."""
        from .cam import compute_cams

        arr, x = self.prepare(image)
        with torch.no_grad():
            probs = torch.softmax(self.model(x).float(), dim=1)[0].cpu()
        p, c = probs.topk(self.topk)
        top = {self.classes[int(i)]: float(v) for v, i in zip(p, c)}
        cam = compute_cams(self.model, x, [int(c[0])], method=method, layer=layer or self.default_layer,
                           reshape_transform=self.reshape)[0]
        return top, overlay(arr, cam, float(opacity))


def build_app(checkpoint: str | Path, device: torch.device | str | None = None, topk: int = 5, *,
              model: str | None = None, imports: Sequence[str] = ()):
    """The Gradio app (a ``gr.Blocks``) for a checkpoint; call ``.launch()`` on it.
    ``model``/``imports`` name the checkpoint's code outside eva8_utils, as in
    :func:`~eva8_utils.checkpoint.load_model`."""
    gr = _gradio()
    from .cam import CAM_METHODS

    clf = Classifier(checkpoint, device, topk, model=model, imports=imports)

    def classify(image, method, layer, opacity):
        if image is None:
            return None, None
        return clf(image, method, layer, opacity)

    with gr.Blocks(title=f"{clf.name} classifier") as app:
        gr.Markdown(f"## {clf.name}: {len(clf.classes)} classes ({', '.join(clf.classes[:10])}"
                    f"{', ...' if len(clf.classes) > 10 else ''})\nUpload an image; it is resized to "
                    f"{clf.size}x{clf.size} as in training.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", elem_id="input-image")
                method = gr.Dropdown(sorted(CAM_METHODS), value="gradcam", label="CAM method")
                layer = gr.Dropdown(clf.layers, value=clf.default_layer, label="CAM layer")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="overlay opacity")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                label = gr.Label(num_top_classes=clf.topk, label="top classes", elem_id="top-classes")
                cam = gr.Image(type="numpy", label="CAM of the top class", elem_id="cam-image")
        inputs, outputs = [image, method, layer, opacity], [label, cam]
        image.change(classify, inputs, outputs)
        button.click(classify, inputs, outputs)
        for control in (method, layer, opacity):
            control.change(classify, inputs, outputs)
    return app


APP_PY = '''"""A Hugging Face Space (Gradio) for {name}, written by `eva8 demo --export`."""
from eva8_utils.demo import build_app

app = build_app("model.pt", device="cpu", topk={topk}, model={model!r}, imports={imports!r})

if __name__ == "__main__":
    app.launch()
'''

SPACE_README = """---
title: {name} classifier
sdk: gradio
app_file: app.py
---

{name} trained with eva8_utils ({n} classes: {classes}). Upload an image to see the top
classes and the CAM of the top one. `app.py` loads `model.pt`; `eva8_utils/` is a copy of
the package that trained it.
"""


def export_space(checkpoint: str | Path, out: str | Path, topk: int = 5, *, model: str | None = None,
                 imports: Sequence[str] = ()) -> Path:
    """Write a folder that runs as a Hugging Face Space (Gradio SDK).

    ``model``/``imports`` name the checkpoint's code outside eva8_utils (as in
    :func:`~eva8_utils.checkpoint.load_model`); the Space gets copies of those
    single-file modules, and of no others.

    Raises:
        UserError: the checkpoint cannot be loaded (or names code not named here), or
            ``out`` exists and is not empty.
    """
    from .checkpoint import trusted_reference

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("model_ref") is None:
        raise ConfigError(f"{checkpoint} holds a model that was passed in directly; a Space must rebuild it: "
                          f"register the model or train it with --model package.module:callable")
    ref = trusted_reference(ckpt, checkpoint, model, imports)  # refuses code not named, imports nothing
    load_model(checkpoint, model, imports=imports)  # the model must rebuild before anything is written
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--export {out} exists and is not an empty folder; give a new folder")
    trusted = list(ref["imports"]) + ([ref["model"].split(":", 1)[0]] if ":" in ref["model"] else [])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        name = str(ckpt.get("model_name", "model"))
        shutil.copy2(checkpoint, tmp / "model.pt")
        pkg = Path(__file__).resolve().parent
        shutil.copytree(pkg, tmp / "eva8_utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for module in _user_modules(trusted):
            shutil.copy2(module, tmp / module.name)
        app = APP_PY.format(name=name, topk=topk, model=ref["model"] if ":" in ref["model"] else None,
                            imports=list(ref["imports"]))
        (tmp / "app.py").write_text(app, encoding="utf-8")
        (tmp / "requirements.txt").write_text("\n".join(SPACE_REQUIREMENTS) + "\n", encoding="utf-8")
        classes = ", ".join(ckpt["classes"][:10]) + (", ..." if len(ckpt["classes"]) > 10 else "")
        (tmp / "README.md").write_text(SPACE_README.format(name=name, n=len(ckpt["classes"]), classes=classes),
                                       encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _user_modules(names: Sequence[str]) -> list[Path]:
    """The single-file modules (outside this package) among ``names``: modules the user
    named and :func:`~eva8_utils.checkpoint.load_model` has imported already."""
    import sys

    files = []
    for name in dict.fromkeys(names):
        mod = sys.modules.get(name) or importlib.import_module(name)
        f = Path(getattr(mod, "__file__", "") or "")
        if f.suffix == ".py" and f.name != "__init__.py" and "eva8_utils" not in f.parts and "." not in name:
            files.append(f)
    return files


def demo_cli(argv: Sequence[str]) -> int:
    from .cli import Parser, add_trust_flags, command

    p = Parser(prog=command("demo"), description="A local web app for a checkpoint: upload an image, see the top-k "
               "classes and the CAM overlay. Needs Gradio: pip install \"eva8_utils[demo]\".")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a run (e.g. RUN/checkpoints/best.pt)")
    p.add_argument("--export", metavar="DIR", help="write a Hugging Face Space folder instead of serving")
    p.add_argument("--topk", type=int, default=5, help="classes shown (default: 5)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    add_trust_flags(p)
    a = p.parse_args(argv)
    if a.export:
        out = export_space(a.checkpoint, a.export, a.topk, model=a.model, imports=a.imports)
        print(f"wrote a Hugging Face Space to {out}: app.py, requirements.txt, README.md, model.pt, eva8_utils/")
        return 0
    app = build_app(a.checkpoint, get_device(a.device), a.topk, model=a.model, imports=a.imports)
    app.launch(server_name=a.host, server_port=a.port, share=a.share)
    return 0


__all__ = ["build_app", "export_space", "Classifier", "overlay"]
