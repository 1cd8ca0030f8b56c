"""What [`ScoreVAEEncoder`] and [`ScoreVAEPipeline`] add to diffusers' `from_pretrained` / `save_pretrained` /
`push_to_hub`: loading pipelines by repo id (diffusers' own download refuses our encoder), saves that write the remote
code plain diffusers loads them with (generated from this package's source, `diffusers_scorevae.remote_code`), loading
such saves with the package's own classes, and pushes that upload safetensors weights with a ScoreVAE model card.
Everything else is diffusers' behaviour, unchanged."""

from __future__ import annotations

import json
import os
import tempfile

from ..remote_code import module_source
from .download import (
    check_weights_files,
    download_pipeline,
    list_folder_files,
    load_autoencoder_component,
    select_pipeline_files,
)
from .remote_saving import ENCODER_MODULE, PIPELINE_MODULE, RemoteCodeMixin
from .upload import check_safe_serialization, upload_with_model_card

_CARD_KEYS = ("metrics", "training", "datasets", "license")
# the package module of the encoder class, as folders saved before the remote code name it in model_index.json
ENCODER_LIBRARY = "diffusers_scorevae.models.encoder"


class ScoreVAEHubMixin(RemoteCodeMixin):
    """
    Saving and pushing for [`ScoreVAEEncoder`] and [`ScoreVAEPipeline`]: `save_pretrained` also writes the remote code
    that plain diffusers loads the folder with (`trust_remote_code=True`), generated from this package's source
    ([`~diffusers_scorevae.hub.remote_saving.RemoteCodeMixin`]); `push_to_hub` and `save_pretrained(push_to_hub=True)`
    upload safetensors weights and that code with the model card of [`create_model_card`] instead of diffusers'
    generic one.
    """

    _remote_code_kind = "encoder"  # the module of `diffusers_scorevae.remote_code.MODULES` that defines the class

    @classmethod
    def remote_code_source(cls) -> str:
        """The remote module that defines this class, generated from the package's source as it is now."""
        return module_source(cls._remote_code_kind)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        r"""
        Save to `save_directory` as diffusers does (see its `save_pretrained` for every argument). With
        `push_to_hub=True`, also write the ScoreVAE model card to `save_directory/README.md` and upload the folder to
        `repo_id` (`commit_message`, `private`, `token`, `create_pr`, and the card's `metrics`, `training`,
        `datasets`, `license` are read from `kwargs`); the weights must then be safetensors.
        """
        # named arguments, not *args: diffusers' pipeline saving inspects this signature for `variant` & co
        save_kwargs = {"safe_serialization": safe_serialization, "variant": variant, **kwargs}
        if max_shard_size is not None:
            save_kwargs["max_shard_size"] = max_shard_size
        if not push_to_hub:
            return super().save_pretrained(save_directory, **save_kwargs)
        check_safe_serialization(safe_serialization)
        hub_keys = ("commit_message", "private", "token", "create_pr")
        hub_kwargs = {key: save_kwargs.pop(key) for key in hub_keys + _CARD_KEYS if key in save_kwargs}
        repo_id = save_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
        super().save_pretrained(save_directory, **save_kwargs)
        hub_kwargs["commit_message"] = hub_kwargs.get("commit_message") or f"Upload {type(self).__name__}"
        return upload_with_model_card(save_directory, repo_id, model=self, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        metrics: dict | None = None,
        training: dict | None = None,
        datasets: list[str] | None = None,
        license: str | None = "apache-2.0",
    ):
        r"""
        Upload the safetensors weights, the configs and a ScoreVAE model card (`README.md`) to the Hub repo `repo_id`,
        creating it if needed.

        Args:
            repo_id (`str`):
                The repo to push to (`"name"` pushes to your namespace).
            commit_message (`str`, *optional*):
                Defaults to `"Upload <class name>"`.
            private (`bool`, *optional*):
                Whether a newly created repo is private.
            token (`str`, *optional*):
                Hub token; defaults to the stored one.
            create_pr (`bool`, *optional*, defaults to `False`):
                Open a pull request instead of committing to the main branch.
            safe_serialization (`bool`, *optional*, defaults to `True`):
                Must be `True`: ScoreVAE publishes safetensors only.
            variant (`str`, *optional*):
                Save the weights as `diffusion_pytorch_model.<variant>.safetensors`.
            subfolder (`str`, *optional*):
                Upload into this folder of the repo (then no model card is written, as in diffusers).
            metrics (`dict`, *optional*):
                Evaluation numbers for the card (e.g. `{"reconstruction L2": 3.1}`).
            training (`dict`, *optional*):
                Training settings for the card (`beta`, `loss_weighting`, `max_train_steps`, `final_loss`, ...).
            datasets (`List[str]`, *optional*):
                Hub ids of the training data, for the card's metadata.
            license (`str`, *optional*, defaults to `"apache-2.0"`):
                The weights' license; set it to the prior's when that is more restrictive.

        Returns:
            The `huggingface_hub` commit info of the upload.
        """
        check_safe_serialization(safe_serialization)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=True, variant=variant)
            return upload_with_model_card(
                folder,
                repo_id,
                model=None if subfolder else self,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                private=private,
                token=token,
                create_pr=create_pr,
                path_in_repo=subfolder,
                metrics=metrics,
                training=training,
                datasets=datasets,
                license=license,
            )


def as_package_model_index(model_index: dict) -> dict:
    """Rewrite, in place, the entries of `model_index` that name the remote code a ScoreVAE save ships
    (`["pipeline_scorevae", "ScoreVAEPipeline"]`, `["modeling_scorevae_encoder", "ScoreVAEEncoder"]`) as the
    package's classes name them, as folders saved before the remote code do. Returns `model_index`."""
    class_name = model_index.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2 and class_name[0] == PIPELINE_MODULE:
        model_index["_class_name"] = class_name[1]
    for name, entry in model_index.items():
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[0] == ENCODER_MODULE:
            model_index[name] = [ENCODER_LIBRARY, entry[1]]
    return model_index


def _no_model_index(folder: str) -> str:
    """Why a folder without `model_index.json` does not load as a pipeline, and what to load instead."""
    message = f"{folder} has no model_index.json, so it is not a saved pipeline."
    config = os.path.join(folder, "config.json")
    class_name = None
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                class_name = json.load(f).get("_class_name")
        except (OSError, ValueError):
            pass
    if class_name == "ScoreVAEEncoder":
        return (
            f"{message} It holds a ScoreVAEEncoder: load it with `ScoreVAEEncoder.from_pretrained({folder!r})` and "
            "pass it beside a prior: `ScoreVAEPipeline.from_pretrained(PRIOR, encoder=encoder)`."
        )
    if class_name is not None:
        return f"{message} It holds one model ({class_name}, its config.json); load it with its own class."
    if os.path.isdir(os.path.join(folder, "encoder")) and not os.path.isdir(os.path.join(folder, "unet")):
        return (
            f"{message} It has an encoder/ but no prior (a training checkpoint?): load the pipeline folder the run "
            "wrote (its --output_dir, which holds model_index.json), or the encoder with "
            f"`ScoreVAEEncoder.from_pretrained({folder!r}, subfolder='encoder')` beside a prior."
        )
    return (
        f"{message} Pass the folder that holds model_index.json beside unet/, scheduler/ and encoder/ (as "
        "`pipe.save_pretrained(folder)` writes it), or a Hub repo id."
    )


class ScoreVAEPipelineHubMixin(ScoreVAEHubMixin):
    """
    [`ScoreVAEHubMixin`] plus pipeline loading by repo id: [`~ScoreVAEPipelineHubMixin.download`] replaces diffusers'
    (which refuses a component from outside diffusers and transformers), and a local folder is checked the same way
    before loading, so that a missing component or weights file is an error that says what to pass.

    An `LDMPipeline` layout (`unet/`, `vqvae/`, `scheduler/`, as CompVis/ldm-celebahq-256) loads its `vqvae` as the
    pipeline's `vae` (`_component_aliases`).
    """

    # components that a repo may name differently: {name in the repo: name in the pipeline}
    _component_aliases = {"vqvae": "vae"}
    _remote_code_kind = "pipeline"

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`, with a saved pipeline's remote code entries in `model_index.json` (the pipeline
        module's `_class_name`, the encoder's module) read as this package's classes: the package keeps priority over
        the code a folder ships, and loading asks for no `trust_remote_code`."""
        loaded = super().load_config(*args, **kwargs)
        as_package_model_index(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    @classmethod
    def _component_names(cls, kwargs) -> tuple[list[str], list[str], list[str]]:
        """(required, optional, passed) component names for loading, the aliases included among the optional."""
        expected, _ = cls._get_signature_keys(cls)
        optional = list(getattr(cls, "_optional_components", []))
        passed = [k for k in expected if k in kwargs]
        passed += [alias for alias, target in cls._component_aliases.items() if target in kwargs]
        optional += [alias for alias, target in cls._component_aliases.items() if target in optional]
        return [k for k in expected if k not in optional], optional, passed

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""
        Load a pipeline from a Hub repo id or a local folder: a saved ScoreVAE pipeline, or any repo or folder with
        `unet` and `scheduler` (a `DDPMPipeline` such as `google/ddpm-cifar10-32`, whose files sit at the repo root)
        plus `encoder=` a [`ScoreVAEEncoder`]. Takes `DiffusionPipeline.from_pretrained`'s arguments with their
        meanings there: `revision`, `variant`, `use_safetensors` (default `None`: safetensors where a component has
        them, else its `.bin` weights, read with `torch.load(weights_only=True)`), `torch_dtype` (a dtype, or a dict
        per component with an optional `"default"`), `local_files_only`, `cache_dir`, `token`, components as objects.
        `custom_pipeline` is refused: this class is the pipeline. The remote code a saved folder ships (for plain
        diffusers, `trust_remote_code=True`) is not run: the package's own classes load it, with no
        `trust_remote_code` ([`~ScoreVAEPipelineHubMixin.load_config`]).

        Example:

        ```py
        >>> from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

        >>> pipe = ScoreVAEPipeline.from_pretrained("org/scorevae-cifar10")  # doctest: +SKIP
        >>> # an encoder beside a plain unconditional prior (any scheduler)
        >>> encoder = ScoreVAEEncoder.from_pretrained("org/scorevae-cifar10", subfolder="encoder")  # doctest: +SKIP
        >>> pipe = ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32", encoder=encoder)  # doctest: +SKIP
        ```
        """
        if kwargs.get("custom_pipeline") is not None:
            raise ValueError(
                f"custom_pipeline={kwargs['custom_pipeline']!r} is not supported: {cls.__name__}.from_pretrained "
                "always loads a ScoreVAE pipeline."
            )
        folder = str(pretrained_model_name_or_path)
        repo_id = None
        if not os.path.isdir(folder):
            if os.path.isabs(folder) or folder.startswith(".") or folder.count("/") > 1:
                raise FileNotFoundError(f"{folder} is not a folder (nor a Hub repo id, which reads `org/name`).")
            # a repo id: fetch what loading needs (`download`), then load the snapshot
            repo_id, folder = folder, cls.download(folder, **kwargs)
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(_no_model_index(folder))
        with open(index_path, encoding="utf-8") as f:
            model_index = json.load(f)
        required, optional, passed = cls._component_names(kwargs)
        files = select_pipeline_files(
            list_folder_files(folder),
            model_index,
            required_components=required,
            passed_components=passed,
            variant=kwargs.get("variant"),
            use_safetensors=kwargs.get("use_safetensors"),
            name=repo_id or folder,
            optional_components=optional,
        )
        if repo_id is not None:
            advice = (
                f"It is in the Hugging Face cache as part of {repo_id}: download it again with "
                f"`{cls.__name__}.from_pretrained({repo_id!r}, force_download=True)` (with the Hub reachable)."
            )
        else:
            advice = (
                f"Copy the pipeline folder {folder} again from where it came from, or save the pipeline again "
                "(`pipe.save_pretrained(folder)`)."
            )
        check_weights_files(folder, files, advice)
        # a component the repo names differently (LDMPipeline's `vqvae`): load it here, pass it as the pipeline's
        for alias, target in cls._component_aliases.items():
            entry, own = model_index.get(alias), model_index.get(target)
            has = lambda e: isinstance(e, (list, tuple)) and e and e[0] is not None  # noqa: E731
            if has(entry) and not has(own) and target not in kwargs:
                kwargs[target] = load_autoencoder_component(folder, alias, model_index=model_index, **kwargs)
        try:
            pipe = super().from_pretrained(folder, **kwargs)
        except OSError as error:  # e.g. `.bin` weights that torch cannot read: diffusers names the file
            if "Unable to load weights" not in str(error):
                raise
            raise OSError(f"{error.args[0].strip() if error.args else error} The file is damaged. {advice}") from error
        if repo_id is not None:  # as diffusers records it for a repo id
            pipe.register_to_config(_name_or_path=repo_id)
        return pipe

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        r"""
        Download (or find in the cache) what loading `pretrained_model_name` needs and return the snapshot folder:
        `model_index.json`, the configs, and the weights (see [`select_pipeline_files`]) of the components not passed
        as objects. Called by `from_pretrained` for repo ids; see [`download_pipeline`].
        """
        required, optional, passed = cls._component_names(kwargs)
        return download_pipeline(
            pretrained_model_name,
            required_components=required,
            passed_components=passed,
            optional_components=optional,
            cache_dir=kwargs.get("cache_dir"),
            force_download=kwargs.get("force_download", False),
            local_files_only=kwargs.get("local_files_only"),
            token=kwargs.get("token"),
            revision=kwargs.get("revision"),
            variant=kwargs.get("variant"),
            use_safetensors=kwargs.get("use_safetensors"),
        )
