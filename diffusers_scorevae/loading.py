"""Loading pipelines by bundled name, folder or Hub id: the one place the `scorevae` command, the app and the
benchmarks share. It imports the package's models and pipeline, never the command or the app.

Decoding settings are not here: they travel with the model (the encoder's config and the pipeline's
`model_index.json`, see `ScoreVAEPipeline.decode_defaults`), and `None` for a setting means "what the model saved".
"""

from __future__ import annotations

import torch

from .bundled import BUILDABLE, BUNDLED, pretrained_path

# Scheduler types the command, the app and the benchmarks can switch a pipeline to (`--scheduler NAME`): DDPM-family
# ones for priors trained on a variance-preserving schedule, flow ones for flow-matching priors.
SCHEDULERS = ("ddpm", "ddim", "flow_euler", "flow_heun", "flow_euler_ancestral")
FLOW_SCHEDULER_NAMES = ("flow_euler", "flow_heun", "flow_euler_ancestral")
SCHEDULER_CLASS_NAMES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
    "flow_heun": "FlowMatchHeunDiscreteScheduler",
    "flow_euler_ancestral": "LTXEulerAncestralRFScheduler",
}


def default_device(name: str | torch.device | None = None) -> torch.device:
    """`name` as a `torch.device`; `None` picks CUDA when available, else the CPU."""
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(name_or_path: str) -> str:
    """A bundled name (see `pretrained_path`) as its folder; a local folder or a Hub repo id unchanged."""
    return pretrained_path(name_or_path) if name_or_path in BUNDLED or name_or_path in BUILDABLE else name_or_path


def scheduler_class(name: str):
    """The diffusers scheduler class of a short name in `SCHEDULERS`."""
    import diffusers

    if name not in SCHEDULER_CLASS_NAMES:
        raise ValueError(f"scheduler {name!r} is not supported here; choose one of {SCHEDULERS}.")
    if not hasattr(diffusers, SCHEDULER_CLASS_NAMES[name]):
        raise ValueError(
            f"scheduler {name!r} needs diffusers' {SCHEDULER_CLASS_NAMES[name]}, which diffusers "
            f"{diffusers.__version__} does not have; upgrade diffusers or choose another scheduler."
        )
    return getattr(diffusers, SCHEDULER_CLASS_NAMES[name])


def switch_scheduler(scheduler, name: str):
    """`scheduler` rebuilt as the type `name` (one of `SCHEDULERS`) from its config. The prior's family is a property
    of how its UNet was trained: switching a DDPM-family scheduler to a flow one, or back, is a `ValueError`."""
    from .noise import is_flow_scheduler

    cls = scheduler_class(name)
    if is_flow_scheduler(scheduler) != (name in FLOW_SCHEDULER_NAMES):
        family = "a flow-matching" if is_flow_scheduler(scheduler) else "a DDPM-family (variance-preserving)"
        allowed = (
            FLOW_SCHEDULER_NAMES
            if is_flow_scheduler(scheduler)
            else tuple(n for n in SCHEDULERS if n not in FLOW_SCHEDULER_NAMES)
        )
        raise ValueError(
            f"scheduler {name!r} cannot drive this prior: it was trained as {family} model "
            f"({type(scheduler).__name__}); choose one of {allowed}."
        )
    return cls.from_config(scheduler.config)


def load_pipeline(
    pipeline: str = "fashion-mnist",
    prior: str | None = None,
    scheduler: str | None = None,
    device: str | torch.device | None = None,
    clip_sample: bool | None = None,
):
    """Load a `ScoreVAEPipeline` by bundled name, folder or Hub id.

    Args:
        pipeline (`str`, *optional*, defaults to `"fashion-mnist"`):
            The pipeline: a bundled name, a folder or a Hub repo id.
        prior (`str`, *optional*):
            Decode with this prior instead (its unet + scheduler: a pipeline repo or folder in either layout, e.g.
            `google/ddpm-cifar10-32`); only the pipeline's encoder is kept. Its saved decoding settings travel in the
            encoder's config, so they apply to the new prior too.
        scheduler (`str`, *optional*):
            Switch to this scheduler type (one of `SCHEDULERS`), built from the loaded scheduler's config.
        device (`str` or `torch.device`, *optional*):
            Where to put the pipeline; defaults to CUDA when available.
        clip_sample (`bool`, *optional*):
            Rewrite the scheduler's `clip_sample` (where its config has one). `None` keeps the saved config; guided
            decodes do not clip x̂_0 unless asked (see `ScoreVAEPipeline.__call__`'s `clip_sample`).
    """
    from .models import ScoreVAEEncoder
    from .pipelines import ScoreVAEPipeline

    if prior is None:
        pipe = ScoreVAEPipeline.from_pretrained(resolve(pipeline))
    else:
        encoder = ScoreVAEEncoder.from_pretrained(resolve(pipeline), subfolder="encoder")
        pipe = ScoreVAEPipeline.from_pretrained(resolve(prior), encoder=encoder)
    if scheduler is not None:
        pipe.scheduler = switch_scheduler(pipe.scheduler, scheduler)
    if clip_sample is not None and "clip_sample" in pipe.scheduler.config:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, clip_sample=clip_sample)
    return pipe.to(default_device(device))
