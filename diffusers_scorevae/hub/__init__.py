"""The Hugging Face Hub: loading ScoreVAE pipelines, encoders and priors by repo id; pushing with a model card.

The modules, by concern; each imports only the ones before it, and none imports a model or a pipeline (the models and
the pipeline import the mixins):

- `download`: which files loading a pipeline needs, fetching them, and loading a prior's UNet and scheduler.
- `model_card`: the model card (with the decode settings saved in the encoder's config and `model_index.json`), and
  the comparison of an encoder's recorded prior with another prior.
- `upload`: pushing a folder with its model card, and pushing a saved pipeline folder (a training run's output).

Library functions take keyword arguments; the training scripts own their argparse. `training_summary(args, ...)`,
`training_datasets(args)` and `push_pipeline_to_hub(output_dir, repo_id, args)`, the old calls with the training
script's namespace, still work for one release with a `FutureWarning`.
- `mixins`: what [`ScoreVAEEncoder`] and [`ScoreVAEPipeline`] add to diffusers' loading and pushing.

diffusers resolves pipelines from repo ids in ways that break a third-party package; each trap and what we do:

1. `DiffusionPipeline.download` refuses any component whose `model_index.json` entry names a module outside diffusers
   and transformers (`"encoder": ["diffusers_scorevae.models.encoder", "ScoreVAEEncoder"]`) unless the repo ships that
   module as a remote-code file. It only checks when it can list the repo's files: always online, and offline once
   `snapshot_download` has cached the listing (`trees/<commit>.json`), so a test without that listing passes while
   every real user fails. [`ScoreVAEPipelineHubMixin.download`] replaces it: it picks the files itself
   ([`select_pipeline_files`]) and fetches them with `huggingface_hub.snapshot_download`, online and offline alike.
2. `DiffusionPipeline.from_pretrained` (the base class itself) looks `_class_name` up as `getattr(diffusers, name)`, so
   `DiffusionPipeline.from_pretrained("org/scorevae")` cannot find `ScoreVAEPipeline` without mutating diffusers'
   namespace; we do not. Load with `ScoreVAEPipeline.from_pretrained`, which skips the lookup.
3. A component's library is never imported by diffusers (importing runs code); it must already be in `sys.modules`.
   Importing `diffusers_scorevae` imports `diffusers_scorevae.models.encoder`, so the class is found.
4. The loader finds a component's load method by looking up diffusers' base class names (`ModelMixin`, ...) as
   attributes of the component's module: `diffusers_scorevae.models.encoder` must keep `ModelMixin` importable.
5. A repo whose `_class_name` is another pipeline (`DDPMPipeline` of `google/ddpm-cifar10-32`) loads into
   `ScoreVAEPipeline` (the calling class wins). Only the components the pipeline needs are fetched: for a model, its
   weights and `config.json`; for the others (the scheduler), all their files; the root `*.json` of the flat layout of
   early repos (`google/ddpm-*`: `config.json`, weights and `scheduler_config.json` beside `model_index.json`). A
   passed component (`encoder=`) is not fetched.
6. Weights are chosen per component as diffusers chooses them in a local folder (`variant` first, then safetensors
   where present, else `.bin`, which diffusers reads with `torch.load(weights_only=True)`: tensors only, no code), so
   a repo id and its local copy load alike. (diffusers' own download, for a repo where one component lacks
   safetensors, fetches `.bin` for every component.)
7. `push_to_hub` / `save_pretrained(push_to_hub=True)` call `load_or_create_model_card`, which needs the network to
   read the remote card and writes a generic one. Ours write [`create_model_card`]'s card and upload safetensors only.
"""

from .download import (
    AUTOENCODER_COMPONENTS,
    PICKLE_HINT,
    download_pipeline,
    list_folder_files,
    load_autoencoder_component,
    load_latent_prior,
    load_prior,
    select_pipeline_files,
)
from .mixins import ScoreVAEHubMixin, ScoreVAEPipelineHubMixin, as_package_model_index
from .model_card import (
    CARD_TAGS,
    PAPER_URL,
    create_model_card,
    describe_prior_compatibility,
    is_hub_repo_id,
    training_datasets,
    training_summary,
)
from .upload import push_pipeline_to_hub, upload_with_model_card

__all__ = [
    "AUTOENCODER_COMPONENTS",
    "CARD_TAGS",
    "PAPER_URL",
    "PICKLE_HINT",
    "ScoreVAEHubMixin",
    "ScoreVAEPipelineHubMixin",
    "as_package_model_index",
    "create_model_card",
    "describe_prior_compatibility",
    "download_pipeline",
    "is_hub_repo_id",
    "list_folder_files",
    "load_autoencoder_component",
    "load_latent_prior",
    "load_prior",
    "push_pipeline_to_hub",
    "select_pipeline_files",
    "training_datasets",
    "training_summary",
    "upload_with_model_card",
]
