"""An interactive ScoreVAE demo (Gradio): reconstruct, interpolate, sample and swap the prior in a web page.

    scorevae app                         # http://127.0.0.1:7860, the bundled Fashion-MNIST pipeline, no network
    python app.py                        # the same page as a Hugging Face Space runs it

The functions the page's buttons call live here as plain functions of PIL images and return PIL images, metrics dicts
and notes ([`prepare_image`], [`reconstruct`], [`interpolate_strips`], [`sample`], [`swap_prior`]), so they are tested
without a browser. [`build_demo`] puts them in a `gr.Blocks` page and [`launch`] serves it. Gradio is imported only by
those two: the rest of the package does not need it (`pip install "diffusers-scorevae[app]"`).

Decoding settings default to the command's (`cli.DEFAULT_STEPS`, `cli.DEFAULT_GUIDANCE`, `cli.DEFAULT_SCHEDULER`,
`cli.DEFAULT_CLIP_SAMPLE`, and the encoder term's `cli.DEFAULT_GUIDANCE_LOG_SNR_RANGE`),
read when the page is built, so the page decodes as `scorevae demo` does.
"""

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from . import cli
from .bundled import BUNDLED, PRETRAINED_DIR, bundled_test_images

GRADIO_MISSING = 'The app needs Gradio, which is not installed: pip install "diffusers-scorevae[app]"'

# bundled ScoreVAE pipelines the page offers (the latent one only where it is bundled)
PIPELINES = ("fashion-mnist", "fashion-mnist-latent")
# slider ranges: steps, γ, decodes per code, images per request
MAX_STEPS = 1000
MAX_GUIDANCE = 8.0
MAX_DECODES = 8
MAX_IMAGES = 16
# how many times the page enlarges the model's images (nearest neighbour, so pixels stay visible)
DISPLAY_SCALE = 8


class DecodeStopped(Exception):
    """Raised by the app's functions when their `stop` event was set during a decode (the Stop button)."""


def require_gradio():
    """Import and return `gradio`, or raise an `ImportError` that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(GRADIO_MISSING) from error
    return gradio


def available_pipelines() -> list[str]:
    """The bundled ScoreVAE pipelines the page offers: `fashion-mnist`, and `fashion-mnist-latent` where bundled."""
    return [name for name in PIPELINES if name in BUNDLED]


def _prior_space(name: str):
    """What a bundled diffusion prior models: `(latent, sample_size, in_channels)` (`latent`: it comes with a `vae` /
    `vqvae`), or None for a bundle that is not a prior (no `unet` + `scheduler`)."""
    folder = os.path.join(PRETRAINED_DIR, name)
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        components = json.load(f)
    if "unet" not in components or "scheduler" not in components:
        return None
    latent = any(components.get(key) not in (None, [None, None]) for key in ("vae", "vqvae"))
    with open(os.path.join(folder, "unet", "config.json")) as f:
        unet = json.load(f)
    return latent, unet["sample_size"], unet["in_channels"]


def bundled_priors(exclude: str | None = None) -> list[str]:
    """Bundled diffusion priors (pipelines with a `unet` and a `scheduler`) other than `exclude`; with `exclude` a
    bundled pipeline, only the pixel priors of its image size and channels (an encoder guides a prior of the same data
    in the same space; a latent prior is not offered to swap: it works in its own autoencoder's latents)."""
    target = _prior_space(exclude) if exclude in BUNDLED else None
    priors = []
    for name in BUNDLED:
        space = _prior_space(name)
        if name == exclude or space is None or space[0] or (target is not None and space != target):
            continue
        priors.append(name)
    return priors


# ---------------------------------------------------------------------------------------------------------------------
# images in and out


FASHION_MNIST_SHAPE = (28, 28)  # what the bundled β-VAE and classifier read


def is_framed(size: tuple[int, int], shape: tuple[int, int]) -> bool:
    """Whether [`prepare_image`] frames an image of `size` = (width, height) with black to fit `shape` = (height,
    width) instead of resizing it: it is at most 1/8 smaller on each side (28×28 for 32×32), and not the same size."""
    pad_x, pad_y = shape[1] - size[0], shape[0] - size[1]
    return 0 <= pad_x <= shape[1] // 8 and 0 <= pad_y <= shape[0] // 8 and (pad_x, pad_y) != (0, 0)


def prepare_image(image, image_shape: tuple[int, int, int]) -> tuple[PIL.Image.Image, str]:
    r"""
    Turn any image into what the pipeline models, and say what was changed.

    Args:
        image (`str`, `os.PathLike`, `PIL.Image.Image` or `np.ndarray`):
            A file path (any format PIL reads), a PIL image of any size and mode, or an array `(H, W)` / `(H, W, C)`
            (uint8 in [0, 255] or float in [0, 1]).
        image_shape (`Tuple[int, int, int]`):
            The pipeline's `(channels, height, width)` (`pipe.image_shape`); 1 channel means grayscale, 3 RGB.

    Returns:
        `Tuple[PIL.Image.Image, str]`: the image in mode "L" (1 channel) or "RGB" (3) at `width x height`, and a note
        such as "resized from 300×200 to 28×28 (aspect ratio not kept), converted from RGB to grayscale", or
        "used as is" when nothing changed.

    Raises:
        `ValueError`: the file cannot be read as an image, or the array has an unusable shape or type.
    """
    channels, height, width = image_shape
    if channels not in (1, 3):
        raise ValueError(f"The app shows 1- or 3-channel images; this pipeline models {channels} channels.")
    image = _load_image(image)

    notes = []
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit images: scale to 8 bits, not clip
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = PIL.Image.fromarray((array.clip(0, top) / top * 255).round().astype(np.uint8))
        notes.append(f"scaled from {image_mode_name(image.mode)} to 8 bits")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Fashion-MNIST draws light objects on black: transparent pixels become black
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(background, image).convert("RGB")
        notes.append("transparent pixels put on black")
    if is_framed(image.size, (height, width)):
        # a little smaller (28×28 Fashion-MNIST for a 32×32 latent pipeline): pad with black around it, the rule the
        # latent bundle was trained with (`data.pad_images`), instead of enlarging the object
        notes.append(f"padded from {image.size[0]}×{image.size[1]} to {width}×{height} with black")
        image = image.convert("RGB") if image.mode == "P" else image  # a palette's index 0 need not be black
        framed = PIL.Image.new(image.mode, (width, height), 0)
        framed.paste(image, ((width - image.size[0]) // 2, (height - image.size[1]) // 2))
        image = framed
    if image.size != (width, height):
        kept = image.size[0] * height == image.size[1] * width
        notes.append(
            f"resized from {image.size[0]}×{image.size[1]} to {width}×{height}"
            + ("" if kept else " (aspect ratio not kept)")
        )
        image = image.resize((width, height), PIL.Image.LANCZOS, reducing_gap=3.0)
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        source = image_mode_name(image.mode)
        image = image.convert(target)
        if source != image_mode_name(target):
            notes.append(f"converted from {source} to {image_mode_name(target)}")
    return image, ", ".join(notes) if notes else "used as is"


def _load_image(image) -> PIL.Image.Image:
    """A file path, PIL image or array as a PIL image, as given (size and mode unchanged; a palette image from a file
    with transparency as RGBA)."""
    if isinstance(image, (str, os.PathLike)):
        name = os.path.basename(str(image))
        try:
            with PIL.Image.open(image) as opened:
                opened.load()
                image = opened.copy() if opened.mode != "P" else opened.convert("RGBA")
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(
                f"Could not read {name!r} as an image ({type(error).__name__}: {error}). Upload a PNG, JPEG, WebP, "
                "GIF, BMP or TIFF file."
            ) from None
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image has type {type(image).__name__}; expected a file path, a PIL image or a numpy array.")
    return image


def image_mode_name(mode: str) -> str:
    """A readable name of a PIL mode ("L" -> "grayscale")."""
    names = {"L": "grayscale", "1": "black and white", "RGB": "RGB", "RGBA": "RGBA", "P": "palette", "LA": "grayscale"}
    return names.get(mode, mode)


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"image is an array of shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4).")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image is a {array.dtype} array; expected uint8 in [0, 255] or float in [0, 1].")
        array = (np.nan_to_num(array).clip(0, 1) * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(array)


def to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """A PIL image ("L" or "RGB") as a `(1, C, H, W)` float tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def to_pil(images: torch.Tensor, scale: int = DISPLAY_SCALE) -> list[PIL.Image.Image]:
    """`(N, C, H, W)` images in [0, 1] as PIL images enlarged `scale` times (nearest neighbour)."""
    pictures = []
    for image in images.detach().float().clamp(0, 1).cpu():
        array = (image.numpy() * 255).round().astype(np.uint8)
        picture = PIL.Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), PIL.Image.NEAREST))
    return pictures


def bundled_image(index: int) -> tuple[PIL.Image.Image, str]:
    """Bundled Fashion-MNIST test image `index` (grayscale 28×28) and its label's name."""
    from .data import FASHION_MNIST_CLASSES

    images, labels = bundled_test_images()
    if not 0 <= index < len(images):
        raise ValueError(f"bundled image {index} does not exist; choose 0 to {len(images) - 1}.")
    return PIL.Image.fromarray(images[index]), FASHION_MNIST_CLASSES[int(labels[index])]


# ---------------------------------------------------------------------------------------------------------------------
# models


@dataclass
class DemoModels:
    r"""
    What the page decodes with.

    Args:
        pipe ([`ScoreVAEPipeline`]):
            The pipeline, with the scheduler it decodes with.
        name (`str`):
            Its bundled name, folder or Hub id.
        beta_vae ([`BetaVAE`], *optional*):
            The baseline shown beside the reconstructions (the bundled one for Fashion-MNIST-shaped pipelines).
        classifier ([`FashionMNISTClassifier`], *optional*):
            For `class_kept` (as the β-VAE).
        scheduler (`str`, *optional*):
            The scheduler override the pipeline was loaded with (`cli.DEFAULT_SCHEDULER`); other priors get the same.
        device (`torch.device`):
            Where the models run.
    """

    pipe: object
    name: str
    beta_vae: object | None = None
    classifier: object | None = None
    scheduler: str | None = None
    device: torch.device = torch.device("cpu")
    priors: dict = field(default_factory=dict)
    # one decode at a time: the scheduler and the interrupt flag belong to the pipeline, not to a request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prior_pipeline(self, prior: str):
        """The pipeline's encoder beside the bundled prior `prior` (loaded once, then cached)."""
        if prior not in self.priors:
            self.priors[prior] = cli.load_pipeline(self.name, prior, self.scheduler, self.device)
        return self.priors[prior]


def load_models(
    pipeline: str = "fashion-mnist", scheduler: str | None = None, device: str | torch.device | None = None
) -> DemoModels:
    r"""
    Load the pipeline as `scorevae` loads it (`cli.load_pipeline`), with the scheduler override `scheduler`
    (defaults to `cli.DEFAULT_SCHEDULER`), plus the bundled β-VAE and classifier when the pipeline models 1×28×28
    images (Fashion-MNIST) or one-channel images that a 28×28 image is framed in (the 32×32 latent bundle: the
    comparison is then on the 28×28 inside the frame, see [`reconstruct`]).
    """
    from .models import BetaVAE, FashionMNISTClassifier

    scheduler = cli.DEFAULT_SCHEDULER if scheduler is None else scheduler
    device = cli._device(None if device is None else str(device))
    pipe = cli.load_pipeline(pipeline, None, scheduler, device)
    models = DemoModels(pipe=pipe, name=pipeline, scheduler=scheduler, device=device)
    channels, *shape = pipe.image_shape
    shape = tuple(shape)
    if channels == 1 and (shape == FASHION_MNIST_SHAPE or is_framed(FASHION_MNIST_SHAPE[::-1], shape)):
        models.beta_vae = BetaVAE.from_pretrained(cli.resolve("fashion-mnist-beta-vae")).to(device).eval()
        models.classifier = FashionMNISTClassifier.from_pretrained(cli.resolve("fashion-mnist-classifier"))
        models.classifier = models.classifier.to(device).eval()
    return models


def _decode_settings(num_inference_steps, guidance_scale) -> tuple:
    """The given steps and γ, each defaulting (None) to the command's, read now: `cli.DEFAULT_STEPS`,
    `cli.DEFAULT_GUIDANCE`."""
    steps = cli.DEFAULT_STEPS if num_inference_steps is None else num_inference_steps
    return steps, cli.DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale


def _check_settings(num_inference_steps, guidance_scale, seed, **counts):
    if int(num_inference_steps) != num_inference_steps or not 1 <= num_inference_steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {num_inference_steps}.")
    if not 0 <= guidance_scale <= MAX_GUIDANCE:
        raise ValueError(f"γ (guidance scale) must be between 0 and {MAX_GUIDANCE:g}, got {guidance_scale}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number ≥ 0, got {seed}.")
    for name, (value, low, high) in counts.items():
        if int(value) != value or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value}.")


def step_callback(
    total_steps: int,
    progress: Callable | None = None,
    stop: threading.Event | None = None,
    desc: str = "decoding",
) -> Callable:
    r"""
    A `callback_on_step_end` for [`ScoreVAEPipeline.__call__`] that reports `progress(fraction, desc)` after every
    step and, once `stop` is set, sets the pipeline's interrupt flag so that the remaining steps are skipped (the
    diffusers way of stopping a pipeline early).
    """

    def callback(pipe, step, timestep, callback_kwargs):
        if stop is not None and stop.is_set():
            pipe._interrupt = True
        if progress is not None:
            progress((step + 1) / total_steps, f"{desc}: step {step + 1}/{total_steps}")
        return {}

    return callback


def _decode(pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, desc, latents=None):
    """Decode `codes` `(N, latent_dim)` to `(N, C, H, W)` images in [0, 1] (CPU), or raise `DecodeStopped`."""
    out = pipe(
        latent_codes=codes,
        latents=latents,
        num_inference_steps=int(num_inference_steps),
        guidance_scale=float(guidance_scale),
        guidance_log_snr_range=cli.DEFAULT_GUIDANCE_LOG_SNR_RANGE,
        generator=torch.Generator().manual_seed(int(seed)),
        output_type="pt",
        callback_on_step_end=step_callback(int(num_inference_steps), progress, stop, desc),
    )
    if stop is not None and stop.is_set():
        raise DecodeStopped(f"Stopped: {desc} did not finish.")
    return out.images.float().cpu()


# ---------------------------------------------------------------------------------------------------------------------
# what the buttons do


@dataclass
class ReconstructionResult:
    """Output of [`reconstruct`]: images in [0, 1] `(N, C, H, W)`, metrics and a note on the input."""

    original: torch.Tensor
    reconstructions: torch.Tensor
    beta_vae: torch.Tensor | None
    metrics: dict
    note: str


def reconstruct(
    models: DemoModels,
    image,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    num_decodes: int = 1,
    seed: int = 0,
    progress: Callable | None = None,
    stop: threading.Event | None = None,
) -> ReconstructionResult:
    r"""
    Encode one image and decode its code `num_decodes` times with ScoreVAE; reconstruct it with the β-VAE; measure.

    Args:
        models ([`DemoModels`]):
            From [`load_models`].
        image (`str`, `PIL.Image.Image` or `np.ndarray`):
            Any image (see [`prepare_image`]: converted to the pipeline's shape, with a note).
        num_inference_steps (`int`, *optional*, defaults to `cli.DEFAULT_STEPS`):
            Scheduler steps of each decode, 1 to 1000.
        guidance_scale (`float`, *optional*, defaults to `cli.DEFAULT_GUIDANCE`):
            γ, 0 to 8.
        num_decodes (`int`, *optional*, defaults to 1):
            K, decodes of the one code (1 to 8), from different noise.
        seed (`int`, *optional*, defaults to 0):
            Seeds the decodes' noise.
        progress (`Callable[[float, str], Any]`, *optional*):
            Called after every step with the fraction done and a description (e.g. a `gr.Progress`).
        stop (`threading.Event`, *optional*):
            Set it to stop the decode at the next step; the function then raises [`DecodeStopped`].

    Returns:
        [`ReconstructionResult`]: `metrics` has `"scorevae"` (L2, PSNR, SSIM, sharpness of the first decode, the
        code's rate `kl` in nats, `class_kept` over all K decodes; with K ≥ 2 also `l2_mean_of_k` and
        `l2_between_decodes`), `"beta_vae"` (the same, when the β-VAE is loaded), `"original"` (sharpness, and the
        classifier's class) and `"settings"`. When the pipeline is larger than 28×28 and the image was a 28×28 one
        framed with black, every metric is on the central 28×28 (the image itself, as `scorevae evaluate` measures
        the latent bundle; `settings["compared_on"]` says so) and the β-VAE reconstructs that 28×28 image; another
        image gets no β-VAE or classifier there.
    """
    from .data import FASHION_MNIST_CLASSES
    from .evaluation import beta_vae_metrics, center_crop, decode_metrics, kl_rate, reconstruction_metrics

    num_inference_steps, guidance_scale = _decode_settings(num_inference_steps, guidance_scale)
    _check_settings(num_inference_steps, guidance_scale, seed, **{"decodes per code": (num_decodes, 1, MAX_DECODES)})
    image = _load_image(image)
    picture, note = prepare_image(image, models.pipe.image_shape)
    original = to_tensor(picture)
    num_decodes = int(num_decodes)

    with models.lock:
        codes = models.pipe.encode(original).repeat(num_decodes, 1)
        decodes = _decode(models.pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, "decoding")

    # what the metrics compare: the whole image, or the 28×28 image inside its black frame
    beta_vae, classifier, compared, measured = models.beta_vae, models.classifier, original, decodes
    shape = tuple(original.shape[-2:])
    if shape != FASHION_MNIST_SHAPE and beta_vae is not None:
        if image.size == FASHION_MNIST_SHAPE[::-1] and is_framed(image.size, shape):
            compared = center_crop(original, *FASHION_MNIST_SHAPE)
            measured = center_crop(decodes, *FASHION_MNIST_SHAPE)
        else:  # resized into the pipeline's frame: the 28×28 models do not apply
            beta_vae = classifier = None
    originals = compared.expand(num_decodes, *compared.shape[1:])

    metrics = {"scorevae": decode_metrics(compared, measured[:, None], classifier)}
    metrics["scorevae"]["kl"] = kl_rate(models.pipe.encoder, original, vae=getattr(models.pipe, "vae", None)).item()
    if num_decodes > 1:
        metrics["scorevae"]["class_kept"] = _class_kept(classifier, originals, measured)
    baseline = None
    if beta_vae is not None:
        baseline, metrics["beta_vae"] = beta_vae_metrics(beta_vae, compared, classifier)
    metrics["original"] = {"sharpness": reconstruction_metrics(compared, compared)["sharpness"]}
    if classifier is not None:
        with torch.no_grad():
            predicted = classifier(compared.to(models.device)).argmax(1).item()
        metrics["original"]["class"] = FASHION_MNIST_CLASSES[predicted]
    metrics["settings"] = {
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "num_decodes": num_decodes,
        "seed": int(seed),
        "scheduler": type(models.pipe.scheduler).__name__,
    }
    if compared is not original:
        metrics["settings"]["compared_on"] = "the 28×28 image inside the black frame"
    return ReconstructionResult(original, decodes, baseline, metrics, note)


def _class_kept(classifier, originals: torch.Tensor, decodes: torch.Tensor) -> float | None:
    from .metrics import class_kept

    return None if classifier is None else class_kept(classifier, originals, decodes)


def interpolate_strips(
    models: DemoModels,
    image_a,
    image_b,
    num_points: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: Callable | None = None,
    stop: threading.Event | None = None,
) -> tuple[PIL.Image.Image, str]:
    r"""
    Interpolate between two images as `scorevae interpolate` does: DDIM (no clipping), one labelled strip lerping z
    from the DDIM-inverted x_T slerped between the two images' ("z lerp + x_T slerp"), one lerping z alone from one
    shared noise ("z lerp, shared noise"); each strip is `A | num_points interpolants | B`.

    Steps and γ default to the command's (`scorevae interpolate`); `progress` and `stop` as for [`reconstruct`].

    Returns:
        `Tuple[PIL.Image.Image, str]`: the grid (enlarged for display) and a note on the two inputs.
    """
    from diffusers import DDIMScheduler

    from .interpolation import interpolation_grid

    defaults = command_defaults("interpolate")
    num_inference_steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
    guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    _check_settings(num_inference_steps, guidance_scale, seed, **{"points": (num_points, 2, MAX_IMAGES)})
    picture_a, note_a = prepare_image(image_a, models.pipe.image_shape)
    picture_b, note_b = prepare_image(image_b, models.pipe.image_shape)

    # the same modules with a DDIM scheduler that does not clip (DDIM inversion needs it; see `pipe.invert`)
    components = dict(models.pipe.components)
    components["scheduler"] = DDIMScheduler.from_config(
        models.pipe.scheduler.config, clip_sample=False, thresholding=False
    )
    view = type(models.pipe)(**components)
    view.progress_bar = _progress_bar(progress, stop, num_passes=3)  # inversion, then two decodes
    with models.lock:
        grid = interpolation_grid(
            view,
            to_tensor(picture_a)[0],
            to_tensor(picture_b)[0],
            num_points=int(num_points),
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            generator=torch.Generator().manual_seed(int(seed)),
            scale=DISPLAY_SCALE // 2,
            guidance_log_snr_range=cli.DEFAULT_INTERPOLATE_LOG_SNR_RANGE,
        )
    return grid, f"A: {note_a}; B: {note_b}"


def _progress_bar(progress, stop, num_passes: int):
    """A stand-in for `DiffusionPipeline.progress_bar` that reports to `progress` and raises `DecodeStopped` when
    `stop` is set (for `interpolate`, whose inversion takes no step callback)."""
    passes = []

    def progress_bar(iterable=None, total=None):
        passes.append(None)
        items = list(iterable)
        for i, item in enumerate(items):
            if stop is not None and stop.is_set():
                raise DecodeStopped("Stopped: the interpolation did not finish.")
            yield item
            if progress is not None:
                desc = f"pass {len(passes)}/{num_passes}: step {i + 1}/{len(items)}"
                progress((len(passes) - 1 + (i + 1) / len(items)) / num_passes, desc)

    return progress_bar


def sample(
    models: DemoModels,
    num_images: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: Callable | None = None,
    stop: threading.Event | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    The VAE's generative model: codes z ~ N(0, I) (drawn from `seed`), each decoded once.

    Returns:
        `Tuple[torch.Tensor, torch.Tensor]`: the images `(N, C, H, W)` in [0, 1] and the codes `(N, latent_dim)`.
    """
    num_inference_steps, guidance_scale = _decode_settings(num_inference_steps, guidance_scale)
    _check_settings(num_inference_steps, guidance_scale, seed, images=(num_images, 1, MAX_IMAGES))
    codes = random_codes(models.pipe, int(num_images), int(seed))
    with models.lock:
        images = _decode(models.pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, "sampling")
    return images, codes


def random_codes(pipe, num_codes: int, seed: int) -> torch.Tensor:
    """`num_codes` codes z ~ N(0, I) of the pipeline's encoder, drawn from `seed`."""
    shape = (num_codes, pipe.encoder.config.latent_dim)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device, pipe.encoder.dtype)


def swap_prior(
    models: DemoModels,
    prior: str,
    image=None,
    num_codes: int = 4,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: Callable | None = None,
    stop: threading.Event | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    r"""
    Decode the same codes through the pipeline's own prior and through another bundled prior (the encoder is not
    retrained: it is conditioned on the noise level, not on a timestep index).

    Args:
        prior (`str`):
            A bundled prior ([`bundled_priors`]), e.g. `"fashion-mnist-prior-large"`.
        image (*optional*):
            Take its code (see [`prepare_image`]); without it, `num_codes` codes z ~ N(0, I) from `seed`.

    Returns:
        `Tuple[Dict[str, torch.Tensor], str]`: images `(N, C, H, W)` in [0, 1] under `"original"` (with an image),
        `models.name` and `prior`, and a note.
    """
    num_inference_steps, guidance_scale = _decode_settings(num_inference_steps, guidance_scale)
    _check_settings(num_inference_steps, guidance_scale, seed, codes=(num_codes, 1, MAX_IMAGES))
    choices = bundled_priors(exclude=models.name)
    if not choices:
        raise ValueError(f"No other bundled prior models the space of {models.name!r}: nothing to swap in.")
    if prior not in choices:
        raise ValueError(f"prior {prior!r} is not a bundled prior other than {models.name!r}; choose from {choices}.")
    rows = {}
    if image is not None:
        picture, note = prepare_image(image, models.pipe.image_shape)
        rows["original"] = to_tensor(picture)
        codes = models.pipe.encode(rows["original"])
        note = f"the code of the image ({note})"
    else:
        codes = random_codes(models.pipe, int(num_codes), int(seed))
        note = f"{int(num_codes)} codes z ~ N(0, I) from seed {int(seed)}"
    other = models.prior_pipeline(prior)
    with models.lock:
        for i, (name, pipe) in enumerate(((models.name, models.pipe), (prior, other))):
            desc = f"prior {i + 1}/2 ({name})"
            rows[name] = _decode(pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, desc)
    return rows, note


def command_defaults(command: str) -> dict:
    """The `scorevae COMMAND` defaults of `--num-inference-steps`, `--guidance-scale` and `--scheduler`."""
    required = {"interpolate": ["a", "b", "--output", "x"], "reconstruct": ["a", "--output-dir", "x"]}
    args = cli.build_parser().parse_args([command, *required.get(command, [])])
    return {key: getattr(args, key) for key in ("num_inference_steps", "guidance_scale", "scheduler")}


def metrics_markdown(metrics: dict) -> str:
    """A Markdown table of [`reconstruct`]'s metrics."""
    columns = ("kl", "l2", "psnr", "ssim", "sharpness", "class_kept", "l2_mean_of_k", "l2_between_decodes")
    rows = {"ScoreVAE": metrics["scorevae"], "β-VAE": metrics.get("beta_vae"), "original": metrics["original"]}
    rows = {name: row for name, row in rows.items() if row is not None}
    columns = [c for c in columns if any(row.get(c) is not None for row in rows.values())]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if row.get(c) is not None else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    settings = metrics["settings"]
    lines.append("")
    lines.append(
        f"{settings['scheduler']}, {settings['num_inference_steps']} steps, γ = {settings['guidance_scale']:g}, "
        f"{settings['num_decodes']} decode(s), seed {settings['seed']}. kl: the code's rate in nats; l2 in [0, 1] "
        f"pixel units over {settings.get('compared_on', 'the image')} (first decode); class_kept (over all decodes): "
        "the bundled classifier gives the original's class"
        + (f" (*{metrics['original']['class']}*)" if "class" in metrics["original"] else "")
        + "."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# the page


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
        """The event armed under `token`; an unknown token (a direct API call that skipped the arming step) is armed
        now."""
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


def _session(request) -> str | None:
    return None if request is None else request.session_hash


def _source_image(source):
    """The image a picker holds: ("bundled", index) or ("file", path)."""
    if source is None:
        raise ValueError("No image yet: pick a bundled test image or upload one.")
    kind, value = source
    return bundled_image(int(value))[0] if kind == "bundled" else value


def _theme(gr):
    # system fonts: the default theme fetches Google Fonts, which an offline machine cannot reach
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])


def build_demo(
    pipeline: str = "fashion-mnist",
    models: DemoModels | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    device: str | None = None,
):
    r"""
    The page: tabs Reconstruct, Interpolate, Sample and Swap prior, each with its settings, a Run button, a Stop
    button and a status line.

    Args:
        pipeline (`str`, *optional*, defaults to `"fashion-mnist"`):
            Bundled name, folder or Hub id of the ScoreVAE pipeline shown first; the bundled pipelines
            ([`available_pipelines`]) are offered beside it.
        models ([`DemoModels`], *optional*):
            Already loaded models for `pipeline` (default: [`load_models`]).
        num_inference_steps (`int`, *optional*, defaults to `cli.DEFAULT_STEPS`):
            The steps sliders' initial value (the Interpolate tab's: `scorevae interpolate`'s default).
        guidance_scale (`float`, *optional*, defaults to `cli.DEFAULT_GUIDANCE`):
            The γ sliders' initial value.
        device (`str`, *optional*):
            Where to load models (default: CUDA when available).

    Returns:
        `gr.Blocks`: the page; serve it with `.queue(default_concurrency_limit=1).launch()` (see [`launch`]).
    """
    gr = require_gradio()

    steps, guidance = _decode_settings(num_inference_steps, guidance_scale)
    interpolation_steps = (
        command_defaults("interpolate")["num_inference_steps"] if num_inference_steps is None else steps
    )
    loaded = {pipeline: models if models is not None else load_models(pipeline, device=device)}
    pipelines = [pipeline] + [name for name in available_pipelines() if name != pipeline]
    stops = _Stops()

    def get_models(name: str) -> DemoModels:
        if name not in pipelines:
            raise ValueError(f"pipeline {name!r} is not offered here; choose from {pipelines}.")
        if name not in loaded:
            loaded[name] = load_models(name, device=device)
        return loaded[name]

    test_images, test_labels = bundled_test_images()
    from .data import FASHION_MNIST_CLASSES

    thumbnails = [
        (to_pil(torch.from_numpy(image)[None, None].float() / 255, scale=3)[0], f"{i}: {FASHION_MNIST_CLASSES[label]}")
        for i, (image, label) in enumerate(zip(test_images, test_labels))
    ]

    def run(fn, request, token):
        """Run a decode for this session; a bad input or a stop becomes a message in the page."""
        key = _session(request)
        event = stops.event(key, token)
        try:
            if event.is_set():
                raise DecodeStopped("Stopped before it started.")
            return fn(event), None
        except (ValueError, TypeError, DecodeStopped) as error:
            return None, f"⚠️ {error}"
        finally:
            stops.finish(key, token)

    def image_picker(tab: str, label: str):
        """Bundled test images to click, an upload box for any file, and the input as the model will see it."""
        source = gr.State(None)
        with gr.Column():
            gallery = gr.Gallery(
                format="png",
                value=thumbnails,
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
            return (
                ("bundled", evt.index),
                to_pil(to_tensor(picture))[0],
                f"bundled test image {evt.index} ({class_name})",
            )

        def uploaded(name: str, path: str | None):
            if path is None:
                return None, None, ""
            try:
                picture, change = prepare_image(path, get_models(name).pipe.image_shape)
            except ValueError as error:
                return None, None, f"⚠️ {error}"
            return ("file", path), to_pil(to_tensor(picture))[0], f"{os.path.basename(path)}: {change}"

        gallery.select(picked, None, [source, preview, note], concurrency_limit=None)
        upload.upload(uploaded, [pipeline_choice, upload], [source, preview, note], concurrency_limit=None)
        return source

    def settings(tab: str, default_steps: int, count_label: str | None = None, count=(1, 1, MAX_DECODES)):
        with gr.Row():
            steps_slider = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="steps", elem_id=f"{tab}-steps")
            guidance_slider = gr.Slider(
                0, MAX_GUIDANCE, value=guidance, step=0.1, label="γ (guidance scale)", elem_id=f"{tab}-guidance"
            )
            sliders = [steps_slider, guidance_slider]
            if count_label is not None:
                sliders.append(
                    gr.Slider(count[1], count[2], value=count[0], step=1, label=count_label, elem_id=f"{tab}-count")
                )
            sliders.append(gr.Slider(0, 10_000, value=0, step=1, label="seed", elem_id=f"{tab}-seed"))
        return sliders

    def buttons(tab: str, label: str):
        with gr.Row():
            go = gr.Button(label, variant="primary", elem_id=f"{tab}-run")
            stop = gr.Button("Stop", variant="stop", elem_id=f"{tab}-stop")
        status = gr.Markdown(elem_id=f"{tab}-status")
        return go, stop, status

    def connect(go, stop, status, handler, inputs, outputs):
        """Run: arm a stop token (unqueued), then queue `handler(token, *inputs)`. Stop: stop this session's decodes;
        only when none is armed does it answer in the status line itself."""
        token = gr.State(None)

        def arm(request: gr.Request):
            return stops.arm(_session(request))

        go.click(arm, None, token, queue=False).then(handler, [token, *inputs], outputs, **decode_options)

        def request_stop(request: gr.Request):
            return gr.skip() if stops.stop(_session(request)) else "Nothing is running."

        stop.click(request_stop, None, status, queue=False)

    decode_options = {"concurrency_limit": 1, "concurrency_id": "decode"}  # one decode at a time, the rest queue

    with gr.Blocks(title="ScoreVAE", analytics_enabled=False) as demo:
        gr.Markdown(
            "# ScoreVAE: a VAE whose decoder is a diffusion model\n"
            "An encoder q(z | x_t, t) trained against a frozen unconditional diffusion prior; decoding samples the "
            "prior with the encoder's score added at every step "
            "([arXiv 2304.12141](https://arxiv.org/abs/2304.12141)). Defaults are the shipped decode settings "
            f"({type(loaded[pipeline].pipe.scheduler).__name__}, {steps} steps, γ = {guidance:g}); decodes run "
            "one at a time and queue. Fashion-MNIST shows light objects on a black background: uploads are "
            "converted to what the model sees, and the page says how."
        )
        pipeline_choice = gr.Dropdown(
            pipelines, value=pipeline, label="pipeline", interactive=len(pipelines) > 1, elem_id="pipeline"
        )

        with gr.Tab("Reconstruct", elem_id="tab-reconstruct"):
            with gr.Row():
                source = image_picker("reconstruct", "image")
                with gr.Column():
                    recon_settings = settings("reconstruct", steps, "decodes per code")
                    go, stop, status = buttons("reconstruct", "Reconstruct")
            with gr.Row():
                original_out = gr.Image(format="png", label="original", height=300, elem_id="reconstruct-original")
                decodes_out = gr.Gallery(
                    format="png",
                    label="ScoreVAE reconstruction(s)",
                    columns=2,
                    height=300,
                    object_fit="contain",
                    elem_id="reconstruct-output",
                )
                beta_out = gr.Image(format="png", label="β-VAE", height=300, elem_id="reconstruct-beta-vae")
            metrics_out = gr.Markdown(elem_id="reconstruct-metrics")

            def on_reconstruct(
                token, name, source, steps, guidance, decodes, seed, request: gr.Request, progress=gr.Progress()
            ):
                def fn(event):
                    image = _source_image(source)
                    return reconstruct(get_models(name), image, steps, guidance, decodes, seed, progress, event)

                result, error = run(fn, request, token)
                if error is not None:
                    return None, None, None, "", error
                beta = None if result.beta_vae is None else to_pil(result.beta_vae)[0]
                return (
                    to_pil(result.original)[0],
                    to_pil(result.reconstructions),
                    beta,
                    metrics_markdown(result.metrics),
                    f"Done. Input: {result.note}.",
                )

            connect(
                go,
                stop,
                status,
                on_reconstruct,
                [pipeline_choice, source, *recon_settings],
                [original_out, decodes_out, beta_out, metrics_out, status],
            )

        with gr.Tab("Interpolate", elem_id="tab-interpolate"):
            with gr.Row():
                source_a = image_picker("interpolate-a", "image A")
                source_b = image_picker("interpolate-b", "image B")
            interp_settings = settings("interpolate", interpolation_steps, "points", count=(8, 2, MAX_IMAGES))
            go, stop, status = buttons("interpolate", "Interpolate")
            strip_out = gr.Image(format="png", label="A | interpolants | B", elem_id="interpolate-output")

            def on_interpolate(token, name, a, b, steps, guidance, points, seed, request: gr.Request,
                               progress=gr.Progress()):  # fmt: skip
                def fn(event):
                    image_a, image_b = _source_image(a), _source_image(b)
                    return interpolate_strips(get_models(name), image_a, image_b, points, steps, guidance, seed,
                                              progress, event)  # fmt: skip

                result, error = run(fn, request, token)
                if error is not None:
                    return None, error
                grid, note = result
                return grid, f"Done (DDIM, no clipping). {note}."

            connect(
                go, stop, status, on_interpolate, [pipeline_choice, source_a, source_b, *interp_settings],
                [strip_out, status]
            )  # fmt: skip

        with gr.Tab("Sample", elem_id="tab-sample"):
            gr.Markdown("Codes z ~ N(0, I), each decoded once: the VAE's generative model.")
            sample_settings = settings("sample", steps, "images", count=(8, 1, MAX_IMAGES))
            go, stop, status = buttons("sample", "Sample")
            samples_out = gr.Gallery(format="png", label="samples", columns=8, height=260, elem_id="sample-output")

            def on_sample(token, name, steps, guidance, count, seed, request: gr.Request, progress=gr.Progress()):
                result, error = run(
                    lambda event: sample(get_models(name), count, steps, guidance, seed, progress, event),
                    request,
                    token,
                )
                if error is not None:
                    return None, error
                return to_pil(result[0]), f"Done: {int(count)} codes from seed {int(seed)}."

            connect(go, stop, status, on_sample, [pipeline_choice, *sample_settings], [samples_out, status])

        with gr.Tab("Swap prior", elem_id="tab-swap-prior"):
            priors = bundled_priors(exclude=pipeline)
            gr.Markdown(
                "The same codes decoded by the pipeline's own prior and by another bundled prior: the encoder is "
                "conditioned on the noise level, so it guides any prior of the same data without retraining. Pick "
                "an image to use its code, or none for codes z ~ N(0, I)."
            )
            prior_choice = gr.Dropdown(priors, value=priors[0] if priors else None, label="other prior")
            with gr.Row():
                source_swap = image_picker("swap", "image (optional)")
                with gr.Column():
                    swap_settings = settings("swap", steps, "codes (without an image)", count=(4, 1, MAX_IMAGES))
                    go, stop, status = buttons("swap", "Decode with both priors")
                    own_out = gr.Gallery(
                        format="png", label="the pipeline's prior", columns=4, height=200, elem_id="swap-own"
                    )
                    other_out = gr.Gallery(
                        format="png", label="the other prior", columns=4, height=200, elem_id="swap-other"
                    )

            def on_swap(token, name, prior, source, steps, guidance, count, seed, request: gr.Request,
                        progress=gr.Progress()):  # fmt: skip
                def fn(event):
                    image = None if source is None else _source_image(source)
                    models = get_models(name)
                    rows, note = swap_prior(models, prior, image, count, steps, guidance, seed, progress, event)
                    return to_pil(rows[models.name]), to_pil(rows[prior]), note

                result, error = run(fn, request, token)
                if error is not None:
                    return None, None, error
                own, other, note = result
                return own, other, f"Done: {note}."

            connect(
                go,
                stop,
                status,
                on_swap,
                [pipeline_choice, prior_choice, source_swap, *swap_settings],
                [own_out, other_out, status],
            )
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
    )
    return demo
