"""The demo app end to end: served on localhost, driven by a real headless browser
(Chromium through Playwright); and its export as a Hugging Face Space."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import HANG_S, ROOT, cli_env, run_cli, shared_between_workers

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("EVA8_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    def build(folder):
        proc = run_cli(["--dataset", "shapes", "--shapes-train", "1024", "--shapes-test", "64", "--model", "fastnet",
                        "--width", "0.5", "--epochs", "3", "--batch-size", "64", "--no-progress", "--no-analysis",
                        "--tta", "none", "--out", str(folder / "run")])
        assert proc.returncode == 0, proc.stderr[-2000:]

    return shared_between_workers(tmp_path_factory, "demo", build) / "run" / "checkpoints" / "best.pt"


def _correct_image(checkpoint, folder):
    """A test image (PNG) the model classifies right, and its class."""
    from PIL import Image

    from eva8_utils.data import make_shapes
    from eva8_utils.predict import predict_images

    s = make_shapes(10, 64, seed=1)  # the run's test split (seed 1)
    for i in range(64):
        path = folder / f"test{i}.png"
        Image.fromarray(s.x_test[i]).save(path)
        top = predict_images(checkpoint, [path], topk=1, device="cpu")[0]["top"][0][0]
        if top == s.classes[s.y_test[i]]:
            return path, top
    raise AssertionError("the model got no test image right")


def test_the_demo_in_a_real_browser(trained, tmp_path):
    pytest.importorskip("gradio")
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's chromium")
    from eva8_utils.demo import build_app

    image, expected = _correct_image(trained, tmp_path)
    port = _free_port()
    app = build_app(trained, device="cpu", topk=3)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                              "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=HANG_S * 1000)
            page.locator("#input-image input[type=file]").set_input_files(str(image))
            label = page.locator("#top-classes")
            label.get_by_text(expected, exact=True).first.wait_for(timeout=HANG_S * 1000)
            lines = [ln.strip() for ln in label.inner_text().splitlines() if ln.strip() and ln.strip() != "top classes"]
            assert lines[0] == expected, lines  # the top-1 class heads the output, then the bars
            assert sum(ln.endswith("%") for ln in lines) == 3  # top-3 bars with their probabilities
            cam = page.locator("#cam-image img")
            cam.first.wait_for(timeout=HANG_S * 1000)
            src = cam.first.get_attribute("src") or ""
            assert src and ("/file=" in src or src.startswith("data:image") or "/gradio_api/" in src)
            # the controls re-run it: another CAM method gives an image again
            page.locator("#classify").click()
            cam.first.wait_for(timeout=HANG_S * 1000)
            browser.close()
    finally:
        app.close()


def test_demo_export_is_a_space_that_runs_without_this_checkout(trained, tmp_path):
    pytest.importorskip("gradio")
    out = tmp_path / "space"
    proc = run_cli(["demo", "--checkpoint", str(trained), "--export", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"app.py", "requirements.txt", "README.md", "model.pt", "eva8_utils"} <= {p.name for p in out.iterdir()}
    assert "gradio" in (out / "requirements.txt").read_text() and "sdk: gradio" in (out / "README.md").read_text()
    # the Space's app builds from its own folder (its copy of the package), not from this checkout
    code = "import runpy; ns = runpy.run_path('app.py'); print(type(ns['app']).__name__)"
    env = cli_env()
    env["PYTHONPATH"] = ""
    p = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().endswith("Blocks")
    proc = run_cli(["demo", "--checkpoint", str(trained), "--export", str(out)])
    assert proc.returncode == 2 and "is not an empty folder" in proc.stderr


def test_demo_without_gradio_is_one_line(trained, tmp_path, monkeypatch, capsys):
    import builtins

    from eva8_utils.main import main

    real = builtins.__import__

    def no_gradio(name, *a, **k):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["demo", "--checkpoint", str(trained)]) == 2
    assert capsys.readouterr().err.strip() == ('error: eva8 demo needs Gradio: pip install "eva8_utils[demo]" '
                                               '(or pip install gradio)')


def test_the_demo_through_its_api(trained, tmp_path):
    """The same round trip without a browser (gradio_client, which comes with Gradio)."""
    pytest.importorskip("gradio")
    client_mod = pytest.importorskip("gradio_client")
    from eva8_utils.demo import build_app

    image, expected = _correct_image(trained, tmp_path)
    port = _free_port()
    app = build_app(trained, device="cpu", topk=3)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = client_mod.Client(f"http://127.0.0.1:{port}/", verbose=False)
        label, cam = client.predict(client_mod.handle_file(str(image)), "gradcam", None, 0.5, fn_index=1)
        assert label["label"] == expected and len(label["confidences"]) == 3
        from PIL import Image

        with Image.open(cam) as im:
            assert im.size == (256, 256)  # the overlay, upscaled for the page
    finally:
        app.close()
