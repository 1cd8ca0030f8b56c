"""What the ScoreVAE demo does, as plain functions of images and settings (no Gradio here).

[`prepare_image`] turns any image file, PIL image or array into what the pipeline models and says how;
[`reconstruct`], [`interpolate_strips`], [`sample`] and [`swap_prior`] take PIL images / paths and settings and return
tensors, metrics dicts and notes. [`load_models`] loads a bundled pipeline (`diffusers_scorevae.loading`) with the
β-VAE and classifier shown beside it. The page ([`diffusers_scorevae.app.page`]) and its API endpoints call these.

Decoding settings travel with the model: a setting left `None` is passed to the pipeline as `None`, which decodes with
the value saved with the model (`pipe.decode_defaults`). Bad input is a `ValueError` whose message says what to do.
"""

import inspect
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from ..bundled import BUNDLED, PRETRAINED_DIR, bundled_test_images
from ..loading import default_device, load_pipeline, resolve

# bundled ScoreVAE pipelines the page offers (the latent one only where it is bundled)
PIPELINES = ("fashion-mnist", "fashion-mnist-latent")
# slider ranges: steps, γ, decodes per code, images per request
MAX_STEPS = 1000
MAX_GUIDANCE = 8.0
MAX_DECODES = 8
MAX_IMAGES = 16
# the largest image file read: its header is checked before any pixel is decoded
MAX_INPUT_PIXELS = 16_000_000
# how many times the page enlarges the model's images (nearest neighbour, so pixels stay visible)
DISPLAY_SCALE = 8


class DecodeStopped(Exception):
    """Raised by the app's functions when their `stop` event was set during a decode (the Stop button)."""


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
UPLOAD = "Upload a PNG, JPEG, WebP, GIF, BMP or TIFF file."


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
        `ValueError`: the file is empty, not an image, damaged or truncated, larger than `MAX_INPUT_PIXELS` (refused
        from its header, before any pixel is decoded), or the array has an unusable shape or type.
    """
    channels, height, width = image_shape
    if channels not in (1, 3):
        raise ValueError(f"The app shows 1- or 3-channel images; this pipeline models {channels} channels.")
    image, notes = _load_image(image)
    notes = list(notes)

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit images: scale to 8 bits, not clip
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        source = image.mode
        image = PIL.Image.fromarray((array.clip(0, top) / top * 255).round().astype(np.uint8))
        notes.append(f"scaled from {_bits(source)} to 8 bits")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Fashion-MNIST draws light objects on black: transparent pixels become black
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(background, image).convert("RGB")
        notes.append("alpha channel flattened: transparent pixels put on black")
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
        if image.mode not in ("L", "RGB"):  # LANCZOS works on 8-bit modes: palette, CMYK, 1-bit go to RGB first
            image = image.convert("RGB") if image.mode != "1" else image.convert("L")
        image = image.resize((width, height), PIL.Image.LANCZOS, reducing_gap=3.0)
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        source = image_mode_name(image.mode)
        image = image.convert(target)
        if source != image_mode_name(target):
            notes.append(f"converted from {source} to {image_mode_name(target)}")
    return image, ", ".join(notes) if notes else "used as is"


def _bits(mode: str) -> str:
    return "16 bits" if mode.startswith("I;16") else "32 bits"


def _load_image(image) -> tuple[PIL.Image.Image, list[str]]:
    """A file path, PIL image or array as a PIL image, as given (size and mode unchanged; a palette image from a file
    with transparency as RGBA), and notes on what was read (the first frame of an animation)."""
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image), []
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image has type {type(image).__name__}; expected a file path, a PIL image or a numpy array.")
    return image, []


def _read_file(path) -> tuple[PIL.Image.Image, list[str]]:
    """Read an image file safely: its size is checked from the header before any pixel is decoded."""
    name = os.path.basename(str(path))
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise ValueError(f"Could not read {name!r}: {error.strerror or error}.") from None
    if size == 0:
        raise ValueError(f"Could not read {name!r} as an image: the file is empty (0 bytes). {UPLOAD}")
    try:
        opened = PIL.Image.open(path)  # reads the header only
    except PIL.Image.DecompressionBombError as error:  # Pillow's own limit (2 × MAX_IMAGE_PIXELS), from the header
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        amount = f" ({int(pixels.group(1)) / 1e6:,.0f} megapixels)" if pixels else ""
        raise ValueError(_too_large(name, amount)) from None
    except PIL.UnidentifiedImageError:
        raise ValueError(
            f"Could not read {name!r} as an image: its contents are not an image, whatever its name says. {UPLOAD}"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ValueError(f"Could not read {name!r} as an image: its header is damaged ({error}). {UPLOAD}") from None
    notes = []
    with opened:
        width, height = opened.size
        if width * height > MAX_INPUT_PIXELS:
            raise ValueError(_too_large(name, f" ({width}×{height}, {width * height / 1e6:,.0f} megapixels)"))
        if getattr(opened, "is_animated", False):
            notes.append(f"animated {opened.format or 'image'}: used its first frame")
            opened.seek(0)
        try:
            opened.load()
            image = opened.copy() if opened.mode != "P" else opened.convert("RGBA")
        except Exception as error:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, zlib errors, ...
            what = "truncated" if "truncated" in str(error) else "damaged"
            raise ValueError(
                f"Could not read {name!r} as an image: the {opened.format or 'image'} file is {what} "
                f"({type(error).__name__}: {error}). Upload the complete file, or save it again."
            ) from None
    return image, notes


def _too_large(name: str, amount: str) -> str:
    return (
        f"{name!r} is too large to read{amount}: the app decodes images of at most {MAX_INPUT_PIXELS / 1e6:g} "
        "megapixels, and this one was refused from its header, before decoding. Upload a smaller image (the model "
        "sees it at a few dozen pixels a side anyway)."
    )


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
    from ..data import FASHION_MNIST_CLASSES

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
            The scheduler type the pipeline was switched to (`loading.SCHEDULERS`; `None`: its saved one); other priors
            get the same.
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

    @property
    def decode_defaults(self) -> dict:
        """The pipeline's saved decoding settings ([`decode_defaults`])."""
        return decode_defaults(self.pipe)

    def prior_pipeline(self, prior: str):
        """The pipeline's encoder beside the bundled prior `prior` (loaded once, then cached)."""
        if prior not in self.priors:
            self.priors[prior] = load_pipeline(self.name, prior, self.scheduler, self.device)
        return self.priors[prior]


def decode_defaults(pipe) -> dict:
    """What a decode uses for each setting left `None`: the settings saved with the model (`pipe.decode_defaults`:
    `num_inference_steps`, `guidance_scale`, `guidance_log_snr_range`, `inversion_log_snr_range`, `realism`)."""
    return dict(pipe.decode_defaults)


def load_models(
    pipeline: str = "fashion-mnist", scheduler: str | None = None, device: str | torch.device | None = None
) -> DemoModels:
    r"""
    Load the pipeline (`loading.load_pipeline`, optionally switched to the scheduler type `scheduler`), plus the
    bundled β-VAE and classifier when the pipeline models 1×28×28 images (Fashion-MNIST) or one-channel images that a
    28×28 image is framed in (the 32×32 latent bundle: the comparison is then on the 28×28 inside the frame, see
    [`reconstruct`]).
    """
    from ..models import BetaVAE, FashionMNISTClassifier

    device = default_device(device)
    pipe = load_pipeline(pipeline, None, scheduler, device)
    models = DemoModels(pipe=pipe, name=pipeline, scheduler=scheduler, device=device)
    channels, *shape = pipe.image_shape
    shape = tuple(shape)
    if channels == 1 and (shape == FASHION_MNIST_SHAPE or is_framed(FASHION_MNIST_SHAPE[::-1], shape)):
        models.beta_vae = BetaVAE.from_pretrained(resolve("fashion-mnist-beta-vae")).to(device).eval()
        models.classifier = FashionMNISTClassifier.from_pretrained(resolve("fashion-mnist-classifier"))
        models.classifier = models.classifier.to(device).eval()
    return models


def _check_settings(pipe, num_inference_steps, guidance_scale, seed, realism=None, **counts) -> tuple[int, float]:
    """Check the settings; return the steps and γ a decode uses (a `None` as the pipeline's saved value)."""
    defaults = decode_defaults(pipe)
    steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
    guidance = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    if not _is_number(steps) or int(steps) != steps or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps}.")
    if not _is_number(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"γ (guidance scale) must be between 0 and {MAX_GUIDANCE:g}, got {guidance}.")
    if not _is_number(seed) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number ≥ 0, got {seed}.")
    if realism is not None and (not _is_number(realism) or not 0 <= realism <= 1):
        raise ValueError(f"realism must be between 0 and 1, got {realism}.")
    for name, (value, low, high) in counts.items():
        if not _is_number(value) or int(value) != value or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value}.")
    return int(steps), float(guidance)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and value == value


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


def decode_kwargs(pipe, num_inference_steps=None, guidance_scale=None, realism=None) -> dict:
    r"""
    The pipeline call's decoding settings: each as given, `None` left to the pipeline (the value saved with the model).
    `realism` is passed only when set; a pipeline whose `__call__` does not take it is a `ValueError` that says so.
    """
    kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if "num_inference_steps" in kwargs:
        kwargs["num_inference_steps"] = int(kwargs["num_inference_steps"])
    if "guidance_scale" in kwargs:
        kwargs["guidance_scale"] = float(kwargs["guidance_scale"])
    if realism is not None:
        if "realism" not in inspect.signature(type(pipe).__call__).parameters:
            raise ValueError(
                f"This pipeline ({type(pipe).__name__}) has no realism setting; leave realism at its default."
            )
        kwargs["realism"] = float(realism)
    return kwargs


def _decode(pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, desc, realism=None):
    """Decode `codes` `(N, latent_dim)` to `(N, C, H, W)` images in [0, 1] (CPU), or raise `DecodeStopped`."""
    total = int(decode_defaults(pipe)["num_inference_steps"] if num_inference_steps is None else num_inference_steps)
    out = pipe(
        latent_codes=codes,
        generator=torch.Generator().manual_seed(int(seed)),
        output_type="pt",
        callback_on_step_end=step_callback(total, progress, stop, desc),
        **decode_kwargs(pipe, num_inference_steps, guidance_scale, realism),
    )
    if stop is not None and stop.is_set():
        raise DecodeStopped(f"Stopped: {desc} did not finish.")
    return out.images.float().cpu()


# ---------------------------------------------------------------------------------------------------------------------
# what the buttons and the API endpoints do


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
    realism: float | None = None,
) -> ReconstructionResult:
    r"""
    Encode one image and decode its code `num_decodes` times with ScoreVAE; reconstruct it with the β-VAE; measure.

    Args:
        models ([`DemoModels`]):
            From [`load_models`].
        image (`str`, `PIL.Image.Image` or `np.ndarray`):
            Any image (see [`prepare_image`]: converted to the pipeline's shape, with a note).
        num_inference_steps (`int`, *optional*):
            Scheduler steps of each decode, 1 to 1000; `None`: the pipeline's saved value.
        guidance_scale (`float`, *optional*):
            γ, 0 to 8; `None`: the pipeline's saved value.
        num_decodes (`int`, *optional*, defaults to 1):
            K, decodes of the one code (1 to 8), from different noise.
        seed (`int`, *optional*, defaults to 0):
            Seeds the decodes' noise.
        progress (`Callable[[float, str], Any]`, *optional*):
            Called after every step with the fraction done and a description (e.g. a `gr.Progress`).
        stop (`threading.Event`, *optional*):
            Set it to stop the decode at the next step; the function then raises [`DecodeStopped`].
        realism (`float`, *optional*):
            0 to 1, passed to the pipeline only when set; a pipeline that cannot honour it raises a `ValueError`.

    Returns:
        [`ReconstructionResult`]: `metrics` has `"scorevae"` (L2, PSNR, SSIM, sharpness of the first decode, the
        code's rate `kl` in nats, `class_kept` over all K decodes; with K ≥ 2 also `l2_mean_of_k` and
        `l2_between_decodes`), `"beta_vae"` (the same, when the β-VAE is loaded), `"original"` (sharpness, and the
        classifier's class) and `"settings"` (the values the decode used). When the pipeline is larger than 28×28 and
        the image was a 28×28 one framed with black, every metric is on the central 28×28 (the image itself, as
        `scorevae evaluate` measures the latent bundle; `settings["compared_on"]` says so) and the β-VAE reconstructs
        that 28×28 image; another image gets no β-VAE or classifier there.
    """
    from ..data import FASHION_MNIST_CLASSES
    from ..evaluation import beta_vae_metrics, center_crop, decode_metrics, kl_rate, reconstruction_metrics

    steps, guidance = _check_settings(
        models.pipe, num_inference_steps, guidance_scale, seed, realism,
        **{"decodes per code": (num_decodes, 1, MAX_DECODES)},
    )  # fmt: skip
    decode_kwargs(models.pipe, realism=realism)  # a pipeline without a realism setting says so before any work
    image, read_notes = _load_image(image)
    picture, note = prepare_image(image, models.pipe.image_shape)
    note = ", ".join(n for n in [*read_notes, note] if n != "used as is") or "used as is"
    original = to_tensor(picture)
    num_decodes = int(num_decodes)

    with models.lock:
        codes = models.pipe.encode(original).repeat(num_decodes, 1)
        decodes = _decode(
            models.pipe, codes, num_inference_steps, guidance_scale, seed, progress, stop, "decoding", realism
        )

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
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "num_decodes": num_decodes,
        "seed": int(seed),
        "scheduler": type(models.pipe.scheduler).__name__,
    }
    if realism is not None:
        metrics["settings"]["realism"] = float(realism)
    if compared is not original:
        metrics["settings"]["compared_on"] = "the 28×28 image inside the black frame"
    return ReconstructionResult(original, decodes, baseline, metrics, note)


def _class_kept(classifier, originals: torch.Tensor, decodes: torch.Tensor) -> float | None:
    from ..metrics import class_kept

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
    Interpolate between two images as `scorevae interpolate` does: DDIM (no clipping; Euler for a flow prior), one
    labelled strip lerping z from the inverted x_T slerped between the two images' ("z lerp + x_T slerp"), one lerping
    z alone from one shared noise ("z lerp, shared noise"); each strip is `A | num_points interpolants | B`.

    Steps and γ default to the pipeline's saved values; the inversion and its decodes are guided over the encoder's
    saved `inversion_log_snr_range`. `progress` and `stop` as for [`reconstruct`].

    Returns:
        `Tuple[PIL.Image.Image, str]`: the grid (enlarged for display) and a note on the two inputs.
    """
    from ..interpolation import interpolation_grid
    from ..inversion import inversion_scheduler

    steps, guidance = _check_settings(
        models.pipe, num_inference_steps, guidance_scale, seed, **{"points": (num_points, 2, MAX_IMAGES)}
    )
    picture_a, note_a = prepare_image(image_a, models.pipe.image_shape)
    picture_b, note_b = prepare_image(image_b, models.pipe.image_shape)

    # the same modules with the deterministic scheduler an inversion runs (DDIM without clipping; Euler for a flow
    # prior; see `pipe.invert`)
    components = dict(models.pipe.components)
    components["scheduler"] = inversion_scheduler(models.pipe.scheduler)
    view = type(models.pipe)(**components)
    view.progress_bar = _progress_bar(progress, stop, num_passes=3)  # inversion, then two decodes
    with models.lock:
        # `interpolation_grid` takes numbers: the saved values, resolved
        grid = interpolation_grid(
            view,
            to_tensor(picture_a)[0],
            to_tensor(picture_b)[0],
            num_points=int(num_points),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(int(seed)),
            scale=DISPLAY_SCALE // 2,
            guidance_log_snr_range=tuple(decode_defaults(models.pipe)["inversion_log_snr_range"]),
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
    The VAE's generative model: codes z ~ N(0, I) (drawn from `seed`), each decoded once (settings `None`: the
    pipeline's saved values).

    Returns:
        `Tuple[torch.Tensor, torch.Tensor]`: the images `(N, C, H, W)` in [0, 1] and the codes `(N, latent_dim)`.
    """
    _check_settings(models.pipe, num_inference_steps, guidance_scale, seed, images=(num_images, 1, MAX_IMAGES))
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
    _check_settings(models.pipe, num_inference_steps, guidance_scale, seed, codes=(num_codes, 1, MAX_IMAGES))
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
    realism = f", realism {settings['realism']:g}" if settings.get("realism") is not None else ""
    lines.append("")
    lines.append(
        f"{settings['scheduler']}, {settings['num_inference_steps']} steps, γ = {settings['guidance_scale']:g}"
        f"{realism}, {settings['num_decodes']} decode(s), seed {settings['seed']}. kl: the code's rate in nats; l2 in "
        f"[0, 1] pixel units over {settings.get('compared_on', 'the image')} (first decode); class_kept (over all "
        "decodes): the bundled classifier gives the original's class"
        + (f" (*{metrics['original']['class']}*)" if "class" in metrics["original"] else "")
        + "."
    )
    return "\n".join(lines)
