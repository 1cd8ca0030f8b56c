"""An interactive ScoreVAE demo (Gradio): reconstruct, interpolate, sample and swap the prior in a web page.

    scorevae app                         # http://127.0.0.1:7860, the bundled Fashion-MNIST pipeline, no network
    python app.py                        # the same page as a Hugging Face Space runs it

Two parts: [`core`] is what the app does, plain functions of images and settings that return PIL images, tensors,
metrics dicts and notes ([`prepare_image`], [`reconstruct`], [`interpolate_strips`], [`sample`], [`swap_prior`]),
tested without a browser; [`page`] is the Gradio page and its API endpoints (`/reconstruct`, `/interpolate`, `/sample`,
`/swap_prior`): [`build_demo`] builds it and [`launch`] serves it. Gradio is imported only when a page is built: the
rest of the package does not need it (`pip install "diffusers-scorevae[app]"`).

Decoding settings travel with the model: a setting left `None` decodes with the value saved with the pipeline
(`pipe.decode_defaults`); the sliders start at those values.
"""

from .core import (
    DISPLAY_SCALE,
    FASHION_MNIST_SHAPE,
    MAX_DECODES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_INPUT_PIXELS,
    MAX_STEPS,
    PIPELINES,
    DecodeStopped,
    DemoModels,
    ReconstructionResult,
    available_pipelines,
    bundled_image,
    bundled_priors,
    decode_defaults,
    decode_kwargs,
    image_mode_name,
    interpolate_strips,
    is_framed,
    load_models,
    metrics_markdown,
    prepare_image,
    random_codes,
    reconstruct,
    sample,
    step_callback,
    swap_prior,
    to_pil,
    to_tensor,
)
from .page import API_NAMES, GRADIO_MISSING, build_demo, launch, require_gradio

__all__ = [
    "API_NAMES",
    "DISPLAY_SCALE",
    "FASHION_MNIST_SHAPE",
    "GRADIO_MISSING",
    "MAX_DECODES",
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_INPUT_PIXELS",
    "MAX_STEPS",
    "PIPELINES",
    "DecodeStopped",
    "DemoModels",
    "ReconstructionResult",
    "available_pipelines",
    "build_demo",
    "bundled_image",
    "bundled_priors",
    "decode_defaults",
    "decode_kwargs",
    "image_mode_name",
    "interpolate_strips",
    "is_framed",
    "launch",
    "load_models",
    "metrics_markdown",
    "prepare_image",
    "random_codes",
    "reconstruct",
    "require_gradio",
    "sample",
    "step_callback",
    "swap_prior",
    "to_pil",
    "to_tensor",
]
