"""The interactive demo: its functions on the real bundled models (few steps), the page's structure, and the page in
headless Chromium. Its API endpoints and bad files: tests/test_app_api.py; under load: tests/test_app_load.py."""

import configparser
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import launch_app

from diffusers_scorevae import app, cli
from diffusers_scorevae.app import page
from diffusers_scorevae.bundled import bundled_test_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2  # every decode here: enough to exercise the loop, seconds on a loaded CPU
DEADLINE = 600  # seconds a wait in the browser may take: it catches a page that hangs, it does not time the app


@pytest.fixture(scope="module")
def models():
    models = app.load_models("fashion-mnist", device="cpu")
    # the bundle decodes at realism 0.1 (6 of 50 steps); at the 2 steps used here that is no step at all, so these
    # tests of the app's mechanics save realism 1 on their copy: every step runs (test_realism_reaches_the_pipeline
    # checks the knob)
    models.pipe.encoder.register_to_config(realism=1.0)
    return models


@pytest.fixture
def saved(models, monkeypatch):
    """The pipeline's saved decode settings, with `STEPS` steps and γ 1.5 saved (patched on the pipeline's class: the
    pipeline and the app both read them from `decode_defaults`)."""
    values = dict(app.decode_defaults(models.pipe), num_inference_steps=STEPS, guidance_scale=1.5)
    monkeypatch.setattr(type(models.pipe), "decode_defaults", property(lambda self: dict(values)))
    return values


def test_prepare_image_converts_any_image_and_says_how():
    rgba = PIL.Image.new("RGBA", (300, 200), (255, 0, 0, 255))
    picture, note = app.prepare_image(rgba, (1, 28, 28))
    assert picture.mode == "L" and picture.size == (28, 28)
    assert "resized from 300×200 to 28×28 (aspect ratio not kept)" in note and "grayscale" in note
    assert "alpha channel flattened: transparent pixels put on black" in note

    bundled = PIL.Image.fromarray(bundled_test_images()[0][0])
    picture, note = app.prepare_image(bundled, (1, 28, 28))
    assert note == "used as is" and np.array_equal(np.asarray(picture), np.asarray(bundled))

    # a 28×28 image for a 32×32 (latent) pipeline is framed with black, as the latent bundle was trained, not enlarged
    picture, note = app.prepare_image(bundled, (1, 32, 32))
    assert note == "padded from 28×28 to 32×32 with black" and picture.size == (32, 32)
    assert np.array_equal(np.asarray(picture), np.pad(np.asarray(bundled), 2))
    picture, note = app.prepare_image(PIL.Image.new("RGB", (16, 16), (255, 0, 0)), (1, 32, 32))
    assert note.startswith("resized from 16×16 to 32×32")  # far smaller: resized as before

    # 16-bit grayscale is scaled to 8 bits (not clipped to white), a float array in [0, 1] is read as such
    sixteen = PIL.Image.fromarray(np.full((56, 56), 32768, dtype=np.uint16))
    picture, note = app.prepare_image(sixteen, (1, 28, 28))
    assert 120 <= np.asarray(picture).mean() <= 135 and "scaled" in note and "resized from 56×56" in note
    picture, note = app.prepare_image(np.full((28, 28, 3), 0.5, dtype=np.float32), (1, 28, 28))
    assert (
        picture.mode == "L"
        and abs(np.asarray(picture).mean() - 128) <= 1
        and note == "converted from RGB to grayscale"
    )


def test_prepare_image_files_and_unreadable_files(tmp_path):
    path = tmp_path / "photo.jpg"
    PIL.Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    picture, note = app.prepare_image(str(path), (1, 28, 28))
    assert picture.size == (28, 28) and note == "resized from 64×64 to 28×28, converted from RGB to grayscale"

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ValueError, match=r"Could not read 'broken.png' as an image.*Upload a PNG, JPEG"):
        app.prepare_image(str(broken), (1, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(28, 28, 2\)"):
        app.prepare_image(np.zeros((28, 28, 2), dtype=np.uint8), (1, 28, 28))


def test_reconstruct_defaults_are_the_pipelines_saved_settings(models, saved):
    reported = []
    image = PIL.Image.fromarray(bundled_test_images()[0][0])
    result = app.reconstruct(models, image, num_decodes=2, seed=3, progress=lambda f, d: reported.append((f, d)))

    assert result.original.shape == (1, 1, 28, 28) and result.reconstructions.shape == (2, 1, 28, 28)
    assert result.beta_vae.shape == (1, 1, 28, 28) and result.note == "used as is"
    assert result.metrics["settings"]["num_inference_steps"] == STEPS
    assert result.metrics["settings"]["guidance_scale"] == 1.5
    for name in ("scorevae", "beta_vae"):
        assert {"kl", "l2", "psnr", "ssim", "sharpness", "class_kept"} <= set(result.metrics[name])
        assert all(np.isfinite(v) for v in result.metrics[name].values())
    assert {"l2_mean_of_k", "l2_between_decodes"} <= set(result.metrics["scorevae"])
    assert result.metrics["original"]["class"] == "Ankle boot"  # the bundled classifier on bundled image 0
    # the two decodes of one code differ (different noise); progress came from every step, ending at 1
    assert not torch.equal(result.reconstructions[0], result.reconstructions[1])
    assert [f for f, _ in reported] == [1 / STEPS, 1.0] and "step 2/2" in reported[-1][1]
    table = app.metrics_markdown(result.metrics)
    assert "| ScoreVAE |" in table and "| β-VAE |" in table and f"{STEPS} steps, γ = 1.5" in table

    again = app.reconstruct(models, image, STEPS, 1.5, num_decodes=2, seed=3)
    assert torch.equal(again.reconstructions, result.reconstructions)  # seeded


def test_realism_reaches_the_pipeline(models):
    image = PIL.Image.fromarray(bundled_test_images()[0][0])
    calls = []
    hook = models.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        mean = app.reconstruct(models, image, 10, realism=0.0, seed=3)  # s = 0.04: no step of 10 (int(0.4))
        assert calls == [] and mean.metrics["settings"]["realism"] == 0.0
        half = app.reconstruct(models, image, 10, realism=0.5, seed=3)  # s = 0.04 + 0.96 / 2: the last 5 steps
        assert len(calls) == 5 and not torch.equal(half.reconstructions, mean.reconstructions)
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="realism must be between 0 and 1, got 2"):
        app.reconstruct(models, image, 10, realism=2)


def test_bad_settings_name_the_value_and_the_range(models):
    image = PIL.Image.fromarray(bundled_test_images()[0][0])
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 1000, got 0"):
        app.reconstruct(models, image, num_inference_steps=0)
    with pytest.raises(ValueError, match=r"γ \(guidance scale\) must be between 0 and 8, got 9"):
        app.reconstruct(models, image, STEPS, guidance_scale=9)
    with pytest.raises(ValueError, match="decodes per code must be a whole number from 1 to 8, got 9"):
        app.reconstruct(models, image, STEPS, num_decodes=9)
    with pytest.raises(ValueError, match="prior 'nope' is not a bundled prior"):
        app.swap_prior(models, "nope", num_inference_steps=STEPS)


def test_stop_ends_a_decode_early(models):
    stop = threading.Event()
    stop.set()
    reported = []
    image = PIL.Image.fromarray(bundled_test_images()[0][0])
    with pytest.raises(app.DecodeStopped, match="Stopped"):
        app.reconstruct(models, image, 5, progress=lambda f, d: reported.append(f), stop=stop)
    assert len(reported) == 1  # the interrupt flag skipped steps 2..5
    with pytest.raises(app.DecodeStopped):
        app.interpolate_strips(models, image, image, 2, STEPS, stop=stop)
    assert models.lock.acquire(blocking=False)  # a stopped decode released the pipeline
    models.lock.release()


def test_interpolate_sample_and_swap_prior(models):
    images = bundled_test_images()[0]
    reported = []
    grid, note = app.interpolate_strips(
        models, images[0], images[1], num_points=3, num_inference_steps=STEPS, progress=lambda f, d: reported.append(f)
    )
    # two labelled rows of A | 3 points | B, each picture 28 px enlarged
    assert grid.width > 5 * 28 * app.DISPLAY_SCALE // 2 and grid.height > 2 * 28 * app.DISPLAY_SCALE // 2
    assert note == "A: used as is; B: used as is" and reported[-1] == 1.0 and len(reported) == 3 * STEPS
    assert models.pipe.scheduler.__class__.__name__ == "DDPMScheduler"  # the shared pipeline keeps its scheduler

    samples, codes = app.sample(models, 3, STEPS, seed=1)
    assert samples.shape == (3, 1, 28, 28) and codes.shape == (3, models.pipe.encoder.config.latent_dim)
    assert torch.equal(app.sample(models, 3, STEPS, seed=1)[0], samples)
    assert not torch.equal(app.sample(models, 3, STEPS, seed=2)[0], samples)

    assert app.bundled_priors(exclude="fashion-mnist") == ["fashion-mnist-prior-large", "fashion-mnist-prior-flow"]
    rows, note = app.swap_prior(models, "fashion-mnist-prior-flow", images[2], num_inference_steps=STEPS)
    flow = rows["fashion-mnist-prior-flow"]
    assert flow.shape == (1, 1, 28, 28) and torch.isfinite(flow).all()
    rows, note = app.swap_prior(models, "fashion-mnist-prior-large", images[2], num_inference_steps=STEPS)
    assert set(rows) == {"original", "fashion-mnist", "fashion-mnist-prior-large"} and "the code of the image" in note
    assert rows["fashion-mnist"].shape == rows["fashion-mnist-prior-large"].shape == (1, 1, 28, 28)
    assert not torch.equal(rows["fashion-mnist"], rows["fashion-mnist-prior-large"])
    rows, note = app.swap_prior(models, "fashion-mnist-prior-large", None, num_codes=2, num_inference_steps=STEPS)
    assert rows["fashion-mnist"].shape == (2, 1, 28, 28) and note == "2 codes z ~ N(0, I) from seed 0"


def test_page_sliders_start_at_the_pipelines_saved_settings(models, saved):
    pytest.importorskip("gradio")
    demo = app.build_demo(models=models)
    values = {b.elem_id: getattr(b, "value", None) for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert values["reconstruct-steps"] == values["sample-steps"] == values["swap-steps"] == STEPS
    assert values["interpolate-steps"] == STEPS
    assert values["reconstruct-realism"] == saved["realism"]
    guidance = [b.value for b in demo.blocks.values() if getattr(b, "label", None) == "γ (guidance scale)"]
    assert guidance == [1.5] * 4
    tabs = [b for b in demo.blocks.values() if type(b).__name__ == "Tab"]
    assert [tab.label for tab in tabs] == ["Reconstruct", "Interpolate", "Sample", "Swap prior"]
    assert len({id(tab.parent) for tab in tabs}) == 1 and type(tabs[0].parent).__name__ == "Tabs"  # one row of tabs
    # the four decodes share one queue slot (one decode at a time; the rest wait), and each has a Stop
    # (the page's and the API's: the queue shows each its place)
    decodes = [
        fn for fn in demo.fns.values() if fn.name in ("on_reconstruct", "on_interpolate", "on_sample", "on_swap")
    ]
    endpoints = [fn for fn in demo.fns.values() if fn.api_visibility == "public"]
    assert len(decodes) == 4 and sorted(fn.api_name for fn in endpoints) == sorted(app.API_NAMES)
    assert all(fn.queue and fn.concurrency_limit == 1 and fn.show_progress == "full" for fn in decodes + endpoints)
    assert len({fn.concurrency_id for fn in decodes + endpoints}) == 1
    # everything else the page does (picking, uploads, arming and pressing Stop, the page's own decodes) is private
    assert all(fn.api_visibility == "private" for fn in demo.fns.values() if fn not in endpoints)
    api = demo.get_api_info()
    assert sorted(api["named_endpoints"]) == sorted(f"/{name}" for name in app.API_NAMES)
    assert not api["unnamed_endpoints"]
    # Run arms a stop token without queueing (so a Stop reaches a queued decode too); Stop is never queued behind a
    # decode, and it cancels nothing through Gradio: the decode ends within a step and answers in its status line
    arms = [fn for fn in demo.fns.values() if fn.name == "arm"]
    stops = [fn for fn in demo.fns.values() if fn.name == "request_stop"]
    assert len(arms) == len(stops) == 4 and not any(fn.queue for fn in arms + stops)
    assert not any(fn.cancels for fn in demo.fns.values())


def test_cli_app_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["app", "--port", "7999"])
    assert exit_info.value.code == 2
    assert 'pip install "diffusers-scorevae[app]"' in capsys.readouterr().err


def test_package_and_command_do_not_import_gradio():
    modules = "diffusers_scorevae, diffusers_scorevae.app, diffusers_scorevae.cli"
    code = f"import sys, {modules}; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_app_does_not_import_the_command():
    # one-way imports: the command imports the app (`scorevae app`), never the other way round
    code = "import sys, diffusers_scorevae.app; print('diffusers_scorevae.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in ("__init__.py", "core.py", "page.py"):
        with open(os.path.join(ROOT, "diffusers_scorevae", "app", name)) as f:
            assert not re.search(r"^\s*from \.\.? import cli|\bcli\.", f.read(), re.M), name


def test_space_files():
    # the Space installs requirements.txt before it copies the repository: every dependency of the package is there,
    # with the range setup.cfg declares (the floors .ci/run tests)
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    required = {line.strip() for line in config["options"]["install_requires"].split("\n") if line.strip()}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = {line.split("#")[0].strip() for line in f if line.split("#")[0].strip()}
    assert required <= lines, required - lines
    assert any(re.match(r"gradio\b", line) for line in lines)
    with open(os.path.join(ROOT, "app.py")) as f:
        assert "launch(" in f.read()


# ---------------------------------------------------------------------------------------------------------------------
# the page in a real browser


def _browser():
    """(chromium, chromedriver) paths, or a reason to skip."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    chromium = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return (
            None,
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver)",
        )
    return (chromium, driver), None


def _open_browser(paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    options.binary_location = paths[0]
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def test_stop_reaches_every_decode_the_session_armed_running_or_queued():
    stops = page._Stops()
    running, queued = stops.arm("a"), stops.arm("a")  # Run pressed twice: one decode runs, one waits in the queue
    other = stops.arm("b")
    running_event = stops.event("a", running)
    assert stops.stop("a") and running_event.is_set() and stops.event("a", queued).is_set()
    assert not stops.event("b", other).is_set()  # another browser session's decode goes on
    stops.finish("a", running)
    stops.finish("a", queued)
    assert not stops.stop("a")  # nothing armed: the page answers "Nothing is running."
    fresh = stops.arm("a")  # a stop does not carry over to the next Run
    assert not stops.event("a", fresh).is_set()


def test_page_reconstructs_in_headless_chromium(models, tmp_path):
    pytest.importorskip("gradio")
    paths, reason = _browser()
    if paths is None:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    demo, url = launch_app(app.launch, models=models, num_inference_steps=STEPS)
    browser = _open_browser(paths)
    try:
        wait = WebDriverWait(browser, DEADLINE)
        browser.get(url)
        thumbnails = "#reconstruct-gallery button.thumbnail-item"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, thumbnails))
        browser.find_elements(By.CSS_SELECTOR, thumbnails)[0].click()
        wait.until(lambda b: "bundled test image 0" in b.find_element(By.ID, "reconstruct-note").text)

        browser.find_element(By.ID, "reconstruct-run").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#reconstruct-output img"))
        wait.until(lambda b: "Done" in b.find_element(By.ID, "reconstruct-status").text)
        browser.save_screenshot(str(tmp_path / "app.png"))

        source = browser.find_element(By.CSS_SELECTOR, "#reconstruct-output img").get_attribute("src")
        with urllib.request.urlopen(source, timeout=30) as response:
            picture = np.asarray(PIL.Image.open(io.BytesIO(response.read())).convert("L"), dtype=np.float32)
        # a 28×28 decode enlarged DISPLAY_SCALE times: constant blocks, and not a blank (constant) picture
        scale = app.DISPLAY_SCALE
        assert picture.shape == (28 * scale, 28 * scale)
        blocks = picture.reshape(28, scale, 28, scale)
        assert np.array_equal(blocks, np.broadcast_to(blocks[:, :1, :, :1], blocks.shape))
        assert picture.std() > 5
        assert "| ScoreVAE |" not in browser.find_element(By.ID, "reconstruct-metrics").text  # rendered as a table
        assert "β-VAE" in browser.find_element(By.ID, "reconstruct-metrics").text
        assert (tmp_path / "app.png").stat().st_size > 10_000

        # an unreadable upload: a readable message in the page, no traceback
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not an image at all")
        browser.find_element(By.CSS_SELECTOR, "#reconstruct-upload input[type=file]").send_keys(str(broken))
        wait.until(lambda b: "Could not read 'broken.png'" in b.find_element(By.ID, "reconstruct-note").text)
        assert "Traceback" not in browser.page_source

        # a long decode shows its steps in the page, and Stop ends it (the decode thread lets the pipeline go)
        steps = browser.find_element(By.CSS_SELECTOR, "#reconstruct-steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")  # one send_keys per chord: a modifier stays down to the call's end
        steps.send_keys("1000")
        steps.send_keys(Keys.ENTER)
        browser.find_elements(By.CSS_SELECTOR, thumbnails)[1].click()
        wait.until(lambda b: "bundled test image 1" in b.find_element(By.ID, "reconstruct-note").text)
        browser.find_element(By.ID, "reconstruct-run").click()
        trackers = "#reconstruct-output [data-testid=status-tracker]"
        wait.until(lambda b: re.search(r"decoding: step \d+/1000", b.find_element(By.CSS_SELECTOR, trackers).text))
        browser.find_element(By.ID, "reconstruct-stop").click()
        # the decode answers for itself, once: no second writer (a Stop reply, a cancelled event) can overwrite it
        wait.until(lambda b: "Stopped: decoding did not finish." in b.find_element(By.ID, "reconstruct-status").text)
        # the status says the decode did not finish; it let the pipeline go (a bound on hanging, not on speed)
        assert models.lock.acquire(timeout=DEADLINE)
        models.lock.release()
        browser.find_element(By.ID, "reconstruct-stop").click()  # nothing left to stop: the button says so
        wait.until(lambda b: "Nothing is running." in b.find_element(By.ID, "reconstruct-status").text)
        browser.save_screenshot(str(tmp_path / "app-stopped.png"))

        # a realism the pipeline cannot honour: its message in the status line (or the decode, where it can)
        try:
            app.reconstruct(models, app.bundled_image(1)[0], STEPS, realism=0.5)
            expected = "Done"
        except ValueError as error:
            expected = str(error).split(" (")[0]
        for selector, value in (("#reconstruct-steps", STEPS), ("#reconstruct-realism", 0.5)):
            field = browser.find_element(By.CSS_SELECTOR, f"{selector} input[type=number]")
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(str(value))
            field.send_keys(Keys.ENTER)
        browser.find_element(By.ID, "reconstruct-run").click()
        wait.until(lambda b: expected in b.find_element(By.ID, "reconstruct-status").text)
        assert "Traceback" not in browser.page_source
    finally:
        browser.quit()
        demo.close()
