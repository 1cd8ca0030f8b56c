"""The ScoreVAE demo page (Gradio Blocks) and its API endpoints.

The page has four tabs (Reconstruct, Interpolate, Sample, Swap prior), each with its settings, a Run button, a Stop
button and a status line. Beside the page the app serves four named, stateless API endpoints: `/reconstruct`,
`/interpolate`, `/sample` and `/swap_prior`. Each takes image files and settings as plain values (a setting left at
`None` decodes with the value saved with the model) and answers images, metrics and a note in one call; bad input is a
`gr.Error` with a readable message. The page's own events (picking a bundled image, uploads, arming a stop) are not in
the API. Every decode, the page's and the API's, waits in one queue and runs one at a time.

Gradio is imported here only inside functions: importing the package does not need it.
"""

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref

import PIL.Image

from . import core
from .core import (
    MAX_DECODES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_STEPS,
    DecodeStopped,
    DemoModels,
    available_pipelines,
    bundled_image,
    bundled_priors,
    load_models,
    metrics_markdown,
    to_pil,
    to_tensor,
)

GRADIO_MISSING = 'The app needs Gradio, which is not installed: pip install "diffusers-scorevae[app]"'
# the API endpoints' names (`client.predict(..., api_name="/reconstruct")`)
API_NAMES = ("reconstruct", "interpolate", "sample", "swap_prior")
# every decode, the page's and the API's: one at a time in one queue, with its queue position and steps shown
DECODE_OPTIONS = {"concurrency_limit": 1, "concurrency_id": "decode", "show_progress": "full"}
# the largest upload Gradio accepts (an image larger than `core.MAX_INPUT_PIXELS` is refused from its header anyway)
MAX_FILE_SIZE = "32mb"
# answered pictures and uploads are removed from the server an hour after they were made
CACHE_SECONDS = 3600

logger = logging.getLogger(__name__)


def require_gradio():
    """Import and return `gradio`, or raise an `ImportError` that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(GRADIO_MISSING) from error
    return gradio


class _Stops:
    """Stop requests per browser session. The Run button first arms a stop event (an instant, unqueued step that
    returns a token), then queues the decode, which looks its event up by that token; the Stop button sets every event
    its session has armed and not finished, running or still queued. The decode is then the only writer of its status
    line: a stopped decode ends within a step and says so itself (Gradio's `cancels=` is not used: it would race the
    decode's own answer, and cannot interrupt a function that is already running)."""

    def __init__(self):
        self._events: dict = {}  # session -> {token: Event}
        self._lock = threading.Lock()

    def arm(self, key) -> str:
        token = uuid.uuid4().hex
        with self._lock:
            self._events.setdefault(key, {})[token] = threading.Event()
        return token

    def event(self, key, token) -> threading.Event:
        """The event armed under `token`; an unknown token (an API call, which skips the arming step) is armed now."""
        with self._lock:
            return self._events.setdefault(key, {}).setdefault(token, threading.Event())

    def finish(self, key, token):
        with self._lock:
            events = self._events.get(key, {})
            events.pop(token, None)
            if not events:
                self._events.pop(key, None)

    def stop(self, key) -> bool:
        with self._lock:
            events = list(self._events.get(key, {}).values())
        for event in events:
            event.set()
        return bool(events)


class _Models:
    """The pipelines the app offers, loaded on first use (one at a time) and kept."""

    def __init__(self, pipeline: str, models: DemoModels | None, device: str | None):
        self.device = device
        self.names = [pipeline] + [name for name in available_pipelines() if name != pipeline]
        self._loaded = {pipeline: models if models is not None else load_models(pipeline, device=device)}
        self._lock = threading.Lock()

    def __call__(self, name: str | None) -> DemoModels:
        name = self.names[0] if name in (None, "") else name
        if name not in self.names:
            raise ValueError(f"pipeline {name!r} is not offered here; choose from {self.names}.")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_models(name, device=self.device)
            return self._loaded[name]


class _PNGs:
    """The pictures the app answers, as PNG files named by their content, each written once (under a temporary name,
    then renamed into place). Gradio saves a returned PIL image itself by rewriting its cached file, so two identical
    answers (several clients sending the same image) could truncate a file that a client is still downloading; a file
    handed over by path is copied into Gradio's cache the same careful way. Files older than `max_age` seconds go."""

    def __init__(self, max_age: float = CACHE_SECONDS):
        self.folder = tempfile.mkdtemp(prefix="scorevae-app-")
        self.max_age = max_age
        self._written = 0
        self._lock = threading.Lock()
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)

    def __call__(self, pictures):
        """A PIL image's file path, a list of them for a list, `None` for `None`."""
        if pictures is None:
            return None
        if isinstance(pictures, (list, tuple)):
            return [self(picture) for picture in pictures]
        buffer = io.BytesIO()
        pictures.save(buffer, "PNG")
        data = buffer.getvalue()
        path = os.path.join(self.folder, hashlib.sha256(data).hexdigest()[:40] + ".png")
        if os.path.exists(path):
            os.utime(path)
            return path
        partial = f"{path}.{uuid.uuid4().hex}.part"
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
        with self._lock:
            self._written += 1
            prune = self._written % 100 == 0
        if prune:
            self.prune()
        return path

    def prune(self):
        old = time.time() - self.max_age
        for entry in os.scandir(self.folder):
            try:
                if entry.stat().st_mtime < old:
                    os.remove(entry.path)
            except OSError:
                pass


def _session(request) -> str | None:
    return None if request is None else request.session_hash


def _run(stops: _Stops, fn, request, token=None):
    """Run `fn(stop_event)` for this session: `(result, None)`, or `(None, message)` for a bad input, a bad setting,
    a stop, or (logged with its traceback) anything else."""
    key = _session(request)
    event = stops.event(key, token)
    try:
        if event.is_set():
            raise DecodeStopped("Stopped before it started.")
        return fn(event), None
    except (ValueError, TypeError, DecodeStopped) as error:
        return None, str(error)
    except Exception as error:  # not the input's fault: keep serving, say what happened
        logger.exception("the app's %s failed", getattr(fn, "__name__", "decode"))
        return None, f"The decode failed ({type(error).__name__}: {error})."
    finally:
        stops.finish(key, token)


def _unset(value, default):
    """`None` when a slider still shows the pipeline's saved value (`default`): the pipeline then uses its own."""
    if value is None or (default is not None and abs(float(value) - float(default)) < 1e-9):
        return None
    return value


def _source_image(source, what: str = "an image"):
    """The image a picker holds: ("bundled", index) or ("file", path)."""
    if source is None:
        raise ValueError(f"No image yet for {what}: pick a bundled test image or upload one.")
    kind, value = source
    return bundled_image(int(value))[0] if kind == "bundled" else value


def _file(path, what: str = "image"):
    """An API call's file: its path, or a `ValueError` when it is missing."""
    if path is None or path == "":
        raise ValueError(f"No {what} was sent: pass an image file (gradio_client.handle_file(path)).")
    return path


def _theme(gr):
    # system fonts: the default theme fetches Google Fonts, which an offline machine cannot reach
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])


class _Page:
    """What the tabs share while the page is built: Gradio, the models, the stop events, the bundled thumbnails and
    the sliders' initial values."""

    def __init__(self, gr, models: _Models, num_inference_steps, guidance_scale):
        from ..data import FASHION_MNIST_CLASSES

        self.gr = gr
        self.models = models
        self.stops = _Stops()
        self.png = _PNGs()
        self.steps, self.guidance = num_inference_steps, guidance_scale  # the build's own values (None: saved)
        images, labels = core.bundled_test_images()
        self.thumbnails = [
            (to_pil(to_tensor(PIL.Image.fromarray(image)), scale=3)[0], f"{i}: {FASHION_MNIST_CLASSES[label]}")
            for i, (image, label) in enumerate(zip(images, labels))
        ]
        self.sliders = {"steps": [], "guidance": [], "realism": []}
        self.endpoints = []

    def initial(self, name: str | None = None) -> dict:
        """The sliders' values for pipeline `name`: the build's, else the pipeline's saved ones."""
        defaults = self.models(name).decode_defaults
        realism = defaults.get("realism")
        return {
            "steps": defaults["num_inference_steps"] if self.steps is None else self.steps,
            "guidance": defaults["guidance_scale"] if self.guidance is None else self.guidance,
            "realism": 0.0 if realism is None else realism,
        }

    def unset(self, name, steps, guidance, realism=None) -> tuple:
        """The sliders' values as decode settings: a value that is still the pipeline's saved one becomes `None`."""
        defaults = self.models(name).decode_defaults
        realism_default = 0.0 if defaults.get("realism") is None else defaults["realism"]
        return (
            _unset(steps, defaults["num_inference_steps"]),
            _unset(guidance, defaults["guidance_scale"]),
            _unset(realism, realism_default),
        )

    # -- building blocks ------------------------------------------------------------------------------------------

    def image_picker(self, tab: str, label: str, pipeline_choice):
        """Bundled test images to click, an upload box for any file, and the input as the model will see it."""
        gr = self.gr
        source = gr.State(None)
        with gr.Column():
            gallery = gr.Gallery(
                format="png",
                value=self.thumbnails,
                label=f"{label}: click a bundled Fashion-MNIST test image",
                columns=5,
                height=230,
                object_fit="contain",
                allow_preview=False,
                elem_id=f"{tab}-gallery",
            )
            upload = gr.File(label="… or upload any image file", type="filepath", elem_id=f"{tab}-upload")
            with gr.Row():
                preview = gr.Image(
                    format="png",
                    label=f"{label} as the model sees it",
                    interactive=False,
                    height=160,
                    elem_id=f"{tab}-input",
                )
                note = gr.Markdown(elem_id=f"{tab}-note")

        def picked(evt: gr.SelectData):
            picture, class_name = bundled_image(evt.index)
            note = f"bundled test image {evt.index} ({class_name})"
            return ("bundled", evt.index), self.png(to_pil(to_tensor(picture))[0]), note

        def uploaded(name: str, path: str | None):
            if path is None:
                return None, None, ""
            try:
                picture, change = core.prepare_image(path, self.models(name).pipe.image_shape)
            except ValueError as error:
                return None, None, f"⚠️ {error}"
            return ("file", path), self.png(to_pil(to_tensor(picture))[0]), f"{os.path.basename(path)}: {change}"

        private = {"api_visibility": "private"}
        gallery.select(picked, None, [source, preview, note], concurrency_limit=None, **private)
        upload.upload(
            uploaded, [pipeline_choice, upload], [source, preview, note], concurrency_limit=2,
            concurrency_id="preview", **private,
        )  # fmt: skip
        return source

    def settings(self, tab: str, count_label: str, count=(1, 1, MAX_DECODES), realism: bool = False):
        gr = self.gr
        initial = self.initial()
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=initial["steps"], step=1, label="steps", elem_id=f"{tab}-steps")
            guidance = gr.Slider(
                0, MAX_GUIDANCE, value=initial["guidance"], step=0.1, label="γ (guidance scale)",
                elem_id=f"{tab}-guidance",
            )  # fmt: skip
            self.sliders["steps"].append(steps)
            self.sliders["guidance"].append(guidance)
            sliders = [steps, guidance]
            sliders.append(
                gr.Slider(count[1], count[2], value=count[0], step=1, label=count_label, elem_id=f"{tab}-count")
            )
            sliders.append(gr.Slider(0, 10_000, value=0, step=1, label="seed", elem_id=f"{tab}-seed"))
            if realism:
                slider = gr.Slider(
                    0, 1, value=initial["realism"], step=0.05, label="realism", elem_id=f"{tab}-realism",
                    info="1: a sample from noise; 0: the mean estimate",
                )  # fmt: skip
                self.sliders["realism"].append(slider)
                sliders.append(slider)
        return sliders

    def buttons(self, tab: str, label: str):
        gr = self.gr
        with gr.Row():
            go = gr.Button(label, variant="primary", elem_id=f"{tab}-run")
            stop = gr.Button("Stop", variant="stop", elem_id=f"{tab}-stop")
        status = gr.Markdown(elem_id=f"{tab}-status")
        return go, stop, status

    def connect(self, go, stop, status, handler, inputs, outputs):
        """Run: arm a stop token (unqueued), then queue `handler(token, *inputs)`. Stop: stop this session's decodes;
        only when none is armed does it answer in the status line itself. None of it is in the API."""
        gr, stops = self.gr, self.stops
        token = gr.State(None)

        def arm(request: gr.Request):
            return stops.arm(_session(request))

        def request_stop(request: gr.Request):
            return gr.skip() if stops.stop(_session(request)) else "Nothing is running."

        go.click(arm, None, token, queue=False, api_visibility="private").then(
            handler, [token, *inputs], outputs, api_visibility="private", **DECODE_OPTIONS
        )
        stop.click(request_stop, None, status, queue=False, api_visibility="private")

    def endpoint(self, fn, api_name: str, settings: dict, outputs):
        """Register a named API endpoint: `fn` takes `settings`' values (name -> (kind, default), see
        [`api_inputs`]) and answers `outputs`' in one call. They are built by [`render_endpoints`], after the tabs."""
        self.endpoints.append((fn, api_name, settings, outputs))

    def render_endpoints(self):
        """Each registered endpoint on a hidden trigger, with hidden input components (outside the tabs, so that the
        tabs stay one row of tabs)."""
        for fn, api_name, settings, outputs in self.endpoints:
            inputs = self.api_inputs(**settings)
            trigger = self.gr.Button(visible=False, elem_id=f"api-{api_name}")
            trigger.click(fn, inputs, outputs, api_name=api_name, api_visibility="public", **DECODE_OPTIONS)

    def api_call(self, fn, request):
        """Run `fn(stop_event)` for an API call; a bad input or setting raises `gr.Error` with its message."""
        result, error = _run(self.stops, fn, request)
        if error is not None:
            raise self.gr.Error(error, print_exception=False)
        return result

    def api_inputs(self, **settings):
        """Hidden input components of an API endpoint: settings default to `None` (the model's saved value) unless
        the page was built with its own, then `pipeline`."""
        gr = self.gr
        components = []
        for name, (kind, value) in settings.items():
            if kind == "file":
                components.append(gr.File(type="filepath", visible=False, label=name))
            elif kind == "int":
                components.append(gr.Number(value=value, precision=0, visible=False, label=name))
            elif kind == "float":
                components.append(gr.Number(value=value, visible=False, label=name))
            else:
                components.append(gr.Textbox(value=value, visible=False, label=name))
        components.append(gr.Textbox(value=self.models.names[0], visible=False, label="pipeline"))
        return components


# ---------------------------------------------------------------------------------------------------------------------
# the tabs


def _reconstruct_tab(page: _Page, pipeline_choice):
    gr, models = page.gr, page.models
    with gr.Tab("Reconstruct", elem_id="tab-reconstruct"):
        with gr.Row():
            source = page.image_picker("reconstruct", "image", pipeline_choice)
            with gr.Column():
                settings = page.settings("reconstruct", "decodes per code", realism=True)
                go, stop, status = page.buttons("reconstruct", "Reconstruct")
        with gr.Row():
            original_out = gr.Image(format="png", label="original", height=300, elem_id="reconstruct-original")
            decodes_out = gr.Gallery(
                format="png", label="ScoreVAE reconstruction(s)", columns=2, height=300, object_fit="contain",
                elem_id="reconstruct-output",
            )  # fmt: skip
            beta_out = gr.Image(format="png", label="β-VAE", height=300, elem_id="reconstruct-beta-vae")
        metrics_out = gr.Markdown(elem_id="reconstruct-metrics")
        with gr.Accordion("metrics as JSON", open=False):
            metrics_json = gr.JSON(label="metrics", elem_id="reconstruct-metrics-json")

    def pictures(result):
        beta = None if result.beta_vae is None else to_pil(result.beta_vae)[0]
        return page.png(to_pil(result.original)[0]), page.png(to_pil(result.reconstructions)), page.png(beta)

    def on_reconstruct(token, name, source, steps, guidance, decodes, seed, realism, request: gr.Request,
                       progress=gr.Progress()):  # fmt: skip
        def fn(event):
            image = _source_image(source)
            steps_, guidance_, realism_ = page.unset(name, steps, guidance, realism)
            return core.reconstruct(
                models(name), image, steps_, guidance_, decodes, seed, progress, event, realism=realism_
            )

        result, error = _run(page.stops, fn, request, token)
        if error is not None:
            return None, None, None, "", None, f"⚠️ {error}"
        return (*pictures(result), metrics_markdown(result.metrics), result.metrics, f"Done. Input: {result.note}.")

    page.connect(
        go, stop, status, on_reconstruct, [pipeline_choice, source, *settings],
        [original_out, decodes_out, beta_out, metrics_out, metrics_json, status],
    )  # fmt: skip

    def reconstruct(image, num_inference_steps=None, guidance_scale=None, num_decodes=1, seed=0, realism=None,
                    pipeline=None, request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Encode one image file and decode its code `num_decodes` times; answers the original as the model sees
        it, the reconstructions, the β-VAE's reconstruction (or None), the metrics and a note on the input."""

        def fn(event):
            return core.reconstruct(
                models(pipeline), _file(image), num_inference_steps, guidance_scale, num_decodes, seed, progress,
                event, realism=realism,
            )  # fmt: skip

        result = page.api_call(fn, request)
        return (*pictures(result), result.metrics, f"Input: {result.note}.")

    api = dict(
        image=("file", None), num_inference_steps=("int", page.steps),
        guidance_scale=("float", page.guidance), num_decodes=("int", 1), seed=("int", 0), realism=("float", None),
    )  # fmt: skip
    page.endpoint(reconstruct, "reconstruct", api, [original_out, decodes_out, beta_out, metrics_json, status])


def _interpolate_tab(page: _Page, pipeline_choice):
    gr, models = page.gr, page.models
    with gr.Tab("Interpolate", elem_id="tab-interpolate"):
        with gr.Row():
            source_a = page.image_picker("interpolate-a", "image A", pipeline_choice)
            source_b = page.image_picker("interpolate-b", "image B", pipeline_choice)
        settings = page.settings("interpolate", "points", count=(8, 2, MAX_IMAGES))
        go, stop, status = page.buttons("interpolate", "Interpolate")
        strip_out = gr.Image(format="png", label="A | interpolants | B", elem_id="interpolate-output")

    def on_interpolate(token, name, a, b, steps, guidance, points, seed, request: gr.Request, progress=gr.Progress()):
        def fn(event):
            image_a, image_b = _source_image(a, "image A"), _source_image(b, "image B")
            steps_, guidance_, _ = page.unset(name, steps, guidance)
            return core.interpolate_strips(models(name), image_a, image_b, points, steps_, guidance_, seed, progress,
                                           event)  # fmt: skip

        result, error = _run(page.stops, fn, request, token)
        if error is not None:
            return None, f"⚠️ {error}"
        grid, note = result
        return page.png(grid), f"Done (DDIM, no clipping). {note}."

    page.connect(
        go, stop, status, on_interpolate, [pipeline_choice, source_a, source_b, *settings], [strip_out, status]
    )

    def interpolate(image_a, image_b, num_points=8, num_inference_steps=None, guidance_scale=None, seed=0,
                    pipeline=None, request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Interpolate between two image files (DDIM, no clipping): one strip lerping z from the slerped,
        DDIM-inverted x_T, one lerping z alone; answers the labelled grid and a note on the inputs."""

        def fn(event):
            return core.interpolate_strips(
                models(pipeline), _file(image_a, "image_a"), _file(image_b, "image_b"), num_points,
                num_inference_steps, guidance_scale, seed, progress, event,
            )  # fmt: skip

        grid, note = page.api_call(fn, request)
        return page.png(grid), f"{note}."

    api = dict(
        image_a=("file", None), image_b=("file", None), num_points=("int", 8),
        num_inference_steps=("int", page.steps), guidance_scale=("float", page.guidance), seed=("int", 0),
    )  # fmt: skip
    page.endpoint(interpolate, "interpolate", api, [strip_out, status])


def _sample_tab(page: _Page, pipeline_choice):
    gr, models = page.gr, page.models
    with gr.Tab("Sample", elem_id="tab-sample"):
        gr.Markdown("Codes z ~ N(0, I), each decoded once: the VAE's generative model.")
        settings = page.settings("sample", "images", count=(8, 1, MAX_IMAGES))
        go, stop, status = page.buttons("sample", "Sample")
        samples_out = gr.Gallery(format="png", label="samples", columns=8, height=260, elem_id="sample-output")

    def on_sample(token, name, steps, guidance, count, seed, request: gr.Request, progress=gr.Progress()):
        def fn(event):
            steps_, guidance_, _ = page.unset(name, steps, guidance)
            return core.sample(models(name), count, steps_, guidance_, seed, progress, event)

        result, error = _run(page.stops, fn, request, token)
        if error is not None:
            return None, f"⚠️ {error}"
        return page.png(to_pil(result[0])), f"Done: {int(count)} codes from seed {int(seed)}."

    page.connect(go, stop, status, on_sample, [pipeline_choice, *settings], [samples_out, status])

    def sample(num_images=8, num_inference_steps=None, guidance_scale=None, seed=0, pipeline=None,
               request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Decode `num_images` codes z ~ N(0, I) drawn from `seed`: the VAE's generative model; answers the images
        and a note."""

        def fn(event):
            chosen = models(pipeline)
            return core.sample(chosen, num_images, num_inference_steps, guidance_scale, seed, progress, event)

        images, _ = page.api_call(fn, request)
        return page.png(to_pil(images)), f"{int(num_images)} codes z ~ N(0, I) from seed {int(seed)}."

    api = dict(
        num_images=("int", 8), num_inference_steps=("int", page.steps),
        guidance_scale=("float", page.guidance), seed=("int", 0),
    )  # fmt: skip
    page.endpoint(sample, "sample", api, [samples_out, status])


def _swap_prior_tab(page: _Page, pipeline_choice):
    gr, models = page.gr, page.models
    with gr.Tab("Swap prior", elem_id="tab-swap-prior"):
        priors = bundled_priors(exclude=models.names[0])
        gr.Markdown(
            "The same codes decoded by the pipeline's own prior and by another bundled prior: the encoder is "
            "conditioned on the noise level, so it guides any prior of the same data without retraining. Pick "
            "an image to use its code, or none for codes z ~ N(0, I)."
        )
        prior_choice = gr.Dropdown(priors, value=priors[0] if priors else None, label="other prior")
        with gr.Row():
            source = page.image_picker("swap", "image (optional)", pipeline_choice)
            with gr.Column():
                settings = page.settings("swap", "codes (without an image)", count=(4, 1, MAX_IMAGES))
                go, stop, status = page.buttons("swap", "Decode with both priors")
                own_out = gr.Gallery(format="png", label="the pipeline's prior", columns=4, height=200,
                                     elem_id="swap-own")  # fmt: skip
                other_out = gr.Gallery(format="png", label="the other prior", columns=4, height=200,
                                       elem_id="swap-other")  # fmt: skip

    def decode(name, prior, image, count, steps, guidance, seed, progress, event):
        chosen = models(name)
        rows, note = core.swap_prior(chosen, prior, image, count, steps, guidance, seed, progress, event)
        return page.png(to_pil(rows[chosen.name])), page.png(to_pil(rows[prior])), note

    def on_swap(token, name, prior, source, steps, guidance, count, seed, request: gr.Request,
                progress=gr.Progress()):  # fmt: skip
        def fn(event):
            image = None if source is None else _source_image(source)
            steps_, guidance_, _ = page.unset(name, steps, guidance)
            return decode(name, prior, image, count, steps_, guidance_, seed, progress, event)

        result, error = _run(page.stops, fn, request, token)
        if error is not None:
            return None, None, f"⚠️ {error}"
        own, other, note = result
        return own, other, f"Done: {note}."

    page.connect(
        go, stop, status, on_swap, [pipeline_choice, prior_choice, source, *settings], [own_out, other_out, status]
    )

    def swap_prior(image=None, prior=None, num_codes=4, num_inference_steps=None, guidance_scale=None, seed=0,
                   pipeline=None, request: gr.Request = None, progress=gr.Progress()):  # fmt: skip
        """Decode the same codes through the pipeline's own prior and through another bundled prior (`prior`,
        default: the first offered): the code of an image file, or `num_codes` codes z ~ N(0, I) without one;
        answers the two rows of images and a note."""

        def fn(event):
            chosen = prior or (bundled_priors(exclude=models(pipeline).name) or [""])[0]
            return decode(pipeline, chosen, image or None, num_codes, num_inference_steps, guidance_scale, seed,
                          progress, event)  # fmt: skip

        own, other, note = page.api_call(fn, request)
        return own, other, f"{note}."

    api = dict(
        image=("file", None), prior=("text", priors[0] if priors else None), num_codes=("int", 4),
        num_inference_steps=("int", page.steps), guidance_scale=("float", page.guidance), seed=("int", 0),
    )  # fmt: skip
    page.endpoint(swap_prior, "swap_prior", api, [own_out, other_out, status])


# ---------------------------------------------------------------------------------------------------------------------


def build_demo(
    pipeline: str = "fashion-mnist",
    models: DemoModels | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    device: str | None = None,
):
    r"""
    The page: tabs Reconstruct, Interpolate, Sample and Swap prior, each with its settings, a Run button, a Stop
    button and a status line; and the API endpoints `/reconstruct`, `/interpolate`, `/sample` and `/swap_prior`.

    Args:
        pipeline (`str`, *optional*, defaults to `"fashion-mnist"`):
            Bundled name, folder or Hub id of the ScoreVAE pipeline shown first; the bundled pipelines
            ([`available_pipelines`]) are offered beside it.
        models ([`DemoModels`], *optional*):
            Already loaded models for `pipeline` (default: [`load_models`]).
        num_inference_steps (`int`, *optional*):
            The steps sliders' initial value and the API's default; `None`: the pipeline's saved value.
        guidance_scale (`float`, *optional*):
            The γ sliders' initial value and the API's default; `None`: the pipeline's saved value.
        device (`str`, *optional*):
            Where to load models (default: CUDA when available).

    Returns:
        `gr.Blocks`: the page; serve it with `.queue(default_concurrency_limit=1).launch()` (see [`launch`]).
    """
    gr = require_gradio()
    page = _Page(gr, _Models(pipeline, models, device), num_inference_steps, guidance_scale)
    first = page.models(None)
    initial = page.initial()

    with gr.Blocks(title="ScoreVAE", analytics_enabled=False, delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        gr.Markdown(
            "# ScoreVAE: a VAE whose decoder is a diffusion model\n"
            "An encoder q(z | x_t, t) trained against a frozen unconditional diffusion prior; decoding samples the "
            "prior with the encoder's score added at every step "
            "([arXiv 2304.12141](https://arxiv.org/abs/2304.12141)). Defaults are the decode settings saved with the "
            f"model ({type(first.pipe.scheduler).__name__}, {initial['steps']} steps, γ = {initial['guidance']:g}); "
            "decodes run one at a time and queue (the page shows your place in the queue). Fashion-MNIST shows light "
            "objects on a black background: uploads are converted to what the model sees, and the page says how. "
            "Scripts can call the same decodes: see \"Use via API\" at the bottom."
        )
        names = page.models.names
        pipeline_choice = gr.Dropdown(
            names, value=names[0], label="pipeline", interactive=len(names) > 1, elem_id="pipeline"
        )
        with gr.Tabs():
            _reconstruct_tab(page, pipeline_choice)
            _interpolate_tab(page, pipeline_choice)
            _sample_tab(page, pipeline_choice)
            _swap_prior_tab(page, pipeline_choice)
        page.render_endpoints()

        def on_pipeline(name):
            """The sliders show the chosen pipeline's saved settings (it is loaded now, if it was not)."""
            try:
                values = page.initial(name)
            except ValueError:
                return [gr.skip()] * sum(len(s) for s in page.sliders.values())
            return [values[key] for key, sliders in page.sliders.items() for _ in sliders]

        pipeline_choice.change(
            on_pipeline, pipeline_choice, [s for sliders in page.sliders.values() for s in sliders],
            api_visibility="private", concurrency_limit=None,
        )  # fmt: skip
    return demo


def launch(
    pipeline: str = "fashion-mnist",
    server_name: str | None = None,
    server_port: int | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    **kwargs,
):
    r"""
    Build the page ([`build_demo`], `kwargs` go to it), queue its requests (one decode at a time on the machine) and
    serve it. `server_name` and `server_port` default to Gradio's (`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, else
    127.0.0.1:7860); `share=True` asks Gradio for a public link (needs the internet).

    Returns:
        `gr.Blocks`: the running page (`.close()` stops it).
    """
    gr = require_gradio()
    demo = build_demo(pipeline=pipeline, **kwargs)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=server_name,
        server_port=server_port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        theme=_theme(gr),
        show_error=False,
        max_file_size=MAX_FILE_SIZE,
    )
    return demo
