"""Which files loading a pipeline needs, fetching them from the Hub (online or from the cache), and loading a prior.

diffusers' own `DiffusionPipeline.download` refuses a component whose module is outside diffusers and transformers
(our `encoder`), so [`download_pipeline`] picks the files itself and fetches them with `snapshot_download`. It follows
the rules diffusers applies to a local folder, per component, so a repo id and its local copy load alike.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import diffusers
from diffusers import UNet2DModel
from diffusers.utils import logging
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

try:  # recent huggingface_hub: the file listing that an earlier `snapshot_download` cached
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
except ImportError:  # pragma: no cover - older huggingface_hub: list the cached snapshot instead
    get_cached_repo_tree = CachedRepoTreeNotFoundError = None

logger = logging.get_logger(__name__)

PICKLE_HINT = (
    "`use_safetensors=True` loads safetensors weights only. Leave it unset (`None`, as in diffusers) to load `.bin` "
    "weights where a component has no safetensors; they are read with `torch.load(weights_only=True)`, which loads "
    "tensors and runs no code."
)
# "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
# "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model.fp16-00001-of-00002.bin", ...
_WEIGHTS_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>[\w-]+?))?(?:-\d{5}-of-\d{5})?"
    r"\.(?P<format>safetensors|bin)$"
)
# "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.fp16.json"
_INDEX_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)\.(?P<format>safetensors|bin)\.index(?:\.(?P<variant>[\w-]+))?"
    r"\.json$"
)
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_EXAMPLE_COMPONENT = {"encoder": 'ScoreVAEEncoder.from_pretrained("org/encoder")', "scheduler": "DDIMScheduler()"}


def select_pipeline_files(
    files,
    model_index: dict,
    required_components=(),
    passed_components=(),
    variant: str | None = None,
    use_safetensors: bool | None = None,
    name: str = "the repository",
    optional_components=(),
) -> list[str]:
    """
    The files of a pipeline repo (or folder) that loading it needs, from the list of all its files.

    A component's files are in its folder (`unet/`), or at the root for the flat layout of early diffusers repos
    (`google/ddpm-cifar10-32`: `config.json`, the weights and `scheduler_config.json` beside `model_index.json`).
    Weights are chosen per component as `DiffusionPipeline.from_pretrained` chooses them in a local folder: the
    `variant` weights where the component has them (else its plain weights), then safetensors where present.

    Args:
        files (`Iterable[str]`):
            Every file of the repo, as `/`-separated paths relative to its root.
        model_index (`dict`):
            The repo's `model_index.json`.
        required_components (`Iterable[str]`, *optional*):
            The components the loading pipeline needs (its `__init__` arguments): each must be in `model_index` or
            passed, and only their files are selected. Defaults to every component `model_index` names.
        passed_components (`Iterable[str]`, *optional*):
            Components given to `from_pretrained` as objects: their files are not needed.
        optional_components (`Iterable[str]`, *optional*):
            Components selected too where `model_index` names them, and not required (a latent prior's `vae`, or the
            `vqvae` of an `LDMPipeline`).
        variant (`str`, *optional*):
            Weights variant (`"fp16"`): `diffusion_pytorch_model.fp16.safetensors` where a component has it, the plain
            weights elsewhere; at least one component must have it.
        use_safetensors (`bool`, *optional*):
            As in diffusers: `None` (default) safetensors where present, else `.bin`; `True` safetensors only; `False`
            `.bin` only.
        name (`str`, *optional*):
            The repo id or folder, for error messages.

    Returns:
        `List[str]`: sorted paths: `model_index.json`, the chosen weights, and the configs.
    """
    files = set(files) - set(model_index.get("_ignore_files", []))
    components = {
        key: value
        for key, value in model_index.items()
        if not key.startswith("_") and isinstance(value, (list, tuple)) and value and value[0] is not None
    }
    missing = sorted(set(required_components) - set(components) - set(passed_components))
    if missing:
        raise ValueError(
            f"{name} has no {missing} (its model_index.json names {model_index.get('_class_name')} with "
            f"{sorted(components)}): pass them to `from_pretrained`, e.g. "
            f"`{missing[0]}={_EXAMPLE_COMPONENT.get(missing[0], '...')}`."
        )

    selected, weights = {"model_index.json"}, {}
    wanted = set(required_components or components) | (set(optional_components) & set(components))
    for component in sorted(wanted - set(passed_components)):
        folder = component if any(f.startswith(component + "/") for f in files) else ""  # "": the flat layout
        found = {}
        if folder or not components[component][1].endswith("Scheduler"):  # at the root, the weights are the model's
            found = {f: match for f in files if os.path.dirname(f) == folder and (match := _match_weights(f))}
        if found:  # a model: its config here, its weights below
            weights[component] = found
            selected |= {f"{component}/config.json"} & files if folder else _root_json(files)
        else:  # a scheduler (or any component without weights): all its files
            selected |= {f for f in files if f.startswith(component + "/")} if folder else _root_json(files)
    if variant is not None and not any(m["variant"] == variant for w in weights.values() for m in w.values()):
        # diffusers' own error (`DiffusionPipeline.from_pretrained`), word for word, then what to do
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available. No component of {name} has `{variant}` weights (files like "
            f"`diffusion_pytorch_model.{variant}.safetensors`); leave `variant` unset to load the plain weights."
        )

    for component, found in weights.items():
        has_variant = variant is not None and any(m["variant"] == variant for m in found.values())
        usable = {f: m for f, m in found.items() if m["variant"] == (variant if has_variant else None)}
        formats = {True: {"safetensors"}, False: {"bin"}}.get(use_safetensors)
        if formats is None:
            formats = {"safetensors"} if any(m["format"] == "safetensors" for m in usable.values()) else {"bin"}
        chosen = {f for f, m in usable.items() if m["format"] in formats}
        if not chosen:
            kind = f"{variant} " if has_variant else "plain (non-variant) " if variant is not None else ""
            raise OSError(
                f"{name} has no {kind}{' or '.join(sorted(formats))} weights for `{component}` (it has "
                f"{sorted(found)}). {PICKLE_HINT if use_safetensors else ''}".rstrip()
            )
        selected |= chosen
    return sorted(selected)


def _match_weights(path: str):
    filename = os.path.basename(path)
    return _WEIGHTS_RE.match(filename) or _INDEX_RE.match(filename)


def _root_json(files) -> set[str]:
    return {f for f in files if "/" not in f and f.endswith(".json")}


def download_pipeline(
    repo_id: str,
    required_components=(),
    passed_components=(),
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    optional_components=(),
) -> str:
    """
    Download what loading a pipeline from Hub repo `repo_id` needs, and return the local snapshot folder.

    The same code runs online and offline: `huggingface_hub` answers from its cache when it cannot reach the Hub (or
    with `HF_HUB_OFFLINE=1` / `local_files_only=True`), and the file list comes from the Hub, else from the listing
    cached by an earlier download, else from the cached snapshot itself. See [`select_pipeline_files`] for the
    arguments.

    Returns:
        `str`: the snapshot folder, pinned to the commit `revision` resolved to.
    """
    local_files_only = bool(local_files_only)
    download_kwargs = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    try:
        index_file = hf_hub_download(
            repo_id, "model_index.json", revision=revision, force_download=force_download, **download_kwargs
        )
    except LocalEntryNotFoundError as error:
        raise not_in_cache(repo_id, "model_index.json", cache_dir, local_files_only, revision) from error
    snapshot_folder = Path(index_file).parent
    # every later file comes from the commit this model_index.json came from
    commit = snapshot_folder.name if _COMMIT_RE.match(snapshot_folder.name) else revision
    with open(index_file, encoding="utf-8") as f:
        model_index = json.load(f)

    files = _list_repo_files(repo_id, commit, snapshot_folder, **download_kwargs)
    allow_patterns = select_pipeline_files(
        files,
        model_index,
        required_components=required_components,
        passed_components=passed_components,
        variant=variant,
        use_safetensors=use_safetensors,
        name=repo_id,
        optional_components=optional_components,
    )
    try:
        folder = snapshot_download(
            repo_id, revision=commit, allow_patterns=allow_patterns, force_download=force_download, **download_kwargs
        )
    except LocalEntryNotFoundError as error:  # a snapshot that holds some files (model_index.json), not all
        missing = [f for f in allow_patterns if not (snapshot_folder / f).is_file()] or ["some of its files"]
        raise not_in_cache(repo_id, ", ".join(missing), cache_dir, local_files_only, revision) from error
    missing = [f for f in allow_patterns if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise not_in_cache(repo_id, ", ".join(missing), cache_dir, local_files_only, revision)
    return folder


def not_in_cache(repo_id, what, cache_dir, local_files_only, revision=None) -> LocalEntryNotFoundError:
    """The error for a repo (or some of its files) that is not in the cache while the Hub cannot be asked: which repo,
    which cache, why the Hub was not asked, and what to do."""
    cache = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE=1 keeps the Hub out of reach"
    elif local_files_only:
        why = "`local_files_only=True` keeps the Hub out of reach"
    else:
        why = "the Hub could not be reached"
    at = f" at revision {revision!r}" if revision else ""
    return LocalEntryNotFoundError(
        f"{repo_id}{at} is not in the Hugging Face cache {cache} ({what} missing), and {why}. Download it once where "
        f"the Hub is reachable (e.g. `hf download {repo_id}`, or loading it online) into this cache; or point "
        f"HF_HUB_CACHE (or `cache_dir=`) at a cache that holds it; or pass the path of a local copy. If "
        f"{repo_id!r} was meant as a local folder: there is no such folder."
    )


def check_safetensors_file(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file at `path` (truncated, extra bytes, a header that is not one), or `None`
    when its header is whole and its tensors end exactly at the end of the file. Reads the header only."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it is {size} bytes long, too short for a safetensors header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header declares {length} bytes but the file has {size} bytes (it is truncated)"
        try:
            header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
            return "its header is not a safetensors header"
    expected = 8 + length + end
    if expected != size:
        kind = "it is truncated" if size < expected else "it has extra bytes"
        return f"its tensors need {expected} bytes but the file has {size} ({kind})"
    return None


def check_weights_files(folder: str | os.PathLike, files, advice: str):
    """Raise an `OSError` naming the first safetensors file among `files` (paths relative to `folder`) that
    [`check_safetensors_file`] finds damaged, with `advice` on what to do."""
    for name in files:
        path = os.path.join(folder, name)
        if name.endswith(".safetensors") and os.path.isfile(path):
            problem = check_safetensors_file(path)
            if problem is not None:
                raise OSError(f"The weights file {path} is damaged: {problem}. {advice}")


def _list_repo_files(repo_id, revision, snapshot_folder: Path, cache_dir, local_files_only, token) -> list[str]:
    """All files of `repo_id` at `revision`: from the Hub, else the cached listing, else the cached snapshot."""
    if not local_files_only:
        try:
            return HfApi(token=token).list_repo_files(repo_id, revision=revision)
        except Exception as e:  # offline mode, no connection, Hub down (transport errors vary across versions)
            logger.info(f"Could not list the files of {repo_id} on the Hub ({e}); using the local cache.")
    if get_cached_repo_tree is not None:
        try:
            return [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
        except CachedRepoTreeNotFoundError as e:
            logger.info(f"No cached file listing for {repo_id} ({e}); using the cached snapshot.")
    return list_folder_files(snapshot_folder)


def list_folder_files(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder`, as `/`-separated paths relative to it."""
    return [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]


# the autoencoder of a latent-diffusion prior: `vae` (ScoreVAE pipelines, Stable-Diffusion-style layouts) or `vqvae`
# (LDMPipeline, e.g. CompVis/ldm-celebahq-256)
AUTOENCODER_COMPONENTS = ("vae", "vqvae")
_AUTOENCODER_CLASSES = ("VQModel", "AutoencoderKL")
_HUB_KEYS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


def _prior_folder(pretrained_model_name_or_path, kwargs) -> str:
    hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KEYS if key in kwargs}
    folder = str(pretrained_model_name_or_path)
    if not os.path.isdir(folder):
        folder = download_pipeline(
            folder,
            required_components=("unet", "scheduler"),
            optional_components=AUTOENCODER_COMPONENTS,
            variant=kwargs.get("variant"),
            use_safetensors=kwargs.get("use_safetensors"),
            **hub_kwargs,
        )
    return folder


def load_prior(pretrained_model_name_or_path: str | os.PathLike, **kwargs):
    r"""
    Load the prior of a pipeline: its `unet` and its `scheduler` (of the class it was saved with), from a Hub repo id
    or a folder, in either layout: `unet/` + `scheduler/` folders (`DDPMPipeline.save_pretrained`, or a ScoreVAE
    pipeline, whose encoder is not loaded), or everything at the root (`google/ddpm-cifar10-32`, ...). For a
    latent-diffusion prior (an `LDMPipeline`'s `vqvae/`, or a `vae/`) see [`load_latent_prior`].

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`):
            Hub repo id or folder.
        kwargs:
            `revision`, `cache_dir`, `force_download`, `local_files_only`, `token` (where the files come from), and
            `variant`, `use_safetensors`, `torch_dtype` with their meanings in `UNet2DModel.from_pretrained`.

    Returns:
        `Tuple[UNet2DModel, SchedulerMixin]`: the UNet (in eval mode) and the scheduler.
    """
    unet, scheduler, _ = load_latent_prior(pretrained_model_name_or_path, load_autoencoder=False, **kwargs)
    return unet, scheduler


def load_latent_prior(pretrained_model_name_or_path: str | os.PathLike, load_autoencoder: bool = True, **kwargs):
    r"""
    [`load_prior`] plus the prior's autoencoder: the `VQModel` / `AutoencoderKL` in the folder's `vae/` or `vqvae/`
    (LDMPipeline, e.g. CompVis/ldm-celebahq-256), or `None` for a pixel-space prior. Same arguments.

    Returns:
        `Tuple[UNet2DModel, SchedulerMixin, Optional[ModelMixin]]`: the UNet, the scheduler and the autoencoder.
    """
    folder = _prior_folder(pretrained_model_name_or_path, kwargs)

    def subfolder(name):  # None: the flat layout
        return name if os.path.isdir(os.path.join(folder, name)) else None

    unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder("unet"), **kwargs)
    config = diffusers.DDPMScheduler.load_config(folder, subfolder=subfolder("scheduler"))
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    vae = None
    if load_autoencoder:
        for name in AUTOENCODER_COMPONENTS:
            if subfolder(name) is not None:
                vae = load_autoencoder_component(folder, name, **kwargs)
                break
    return unet, scheduler, vae


def load_autoencoder_component(folder: str, name: str, model_index: dict | None = None, **kwargs):
    """The `VQModel` / `AutoencoderKL` in `folder/name`, of the class `model_index` (else its config) names; `kwargs`:
    `variant` (used where the folder has it), `use_safetensors`, `torch_dtype` (a dtype, or a dict per component)."""
    if model_index is not None and name in model_index:
        library, class_name = model_index[name][:2]
    else:
        library = "diffusers"
        class_name = diffusers.VQModel.load_config(folder, subfolder=name).get("_class_name")
    if library != "diffusers" or class_name not in _AUTOENCODER_CLASSES:
        raise ValueError(
            f"{folder}: the autoencoder `{name}` is {library}.{class_name}; expected diffusers' "
            f"{' or '.join(_AUTOENCODER_CLASSES)}."
        )
    variant = kwargs.get("variant")
    if variant is not None and not any(f".{variant}." in f for f in os.listdir(os.path.join(folder, name))):
        variant = None  # as diffusers: the plain weights for a component without the variant
    torch_dtype = kwargs.get("torch_dtype")
    if isinstance(torch_dtype, dict):
        torch_dtype = torch_dtype.get("vae", torch_dtype.get(name, torch_dtype.get("default")))
    load_kwargs = {"variant": variant, "use_safetensors": kwargs.get("use_safetensors")}
    if torch_dtype is not None:
        load_kwargs["torch_dtype"] = torch_dtype
    return getattr(diffusers, class_name).from_pretrained(folder, subfolder=name, **load_kwargs).eval()
