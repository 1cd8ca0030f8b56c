"""Saving the remote code beside the weights: a saved pipeline or encoder carries the module that plain diffusers
loads it with (`trust_remote_code=True`), in diffusers' layout for custom pipelines and components.

- A pipeline folder: `pipeline_scorevae.py` at its root, named in `model_index.json` as
  `"_class_name": ["pipeline_scorevae", "ScoreVAEPipeline"]`, and the encoder's entry
  `["modeling_scorevae_encoder", "ScoreVAEEncoder"]` naming `encoder/modeling_scorevae_encoder.py`.
- An encoder folder: `modeling_scorevae_encoder.py` beside its weights, and
  `"auto_map": {"AutoModel": "modeling_scorevae_encoder.ScoreVAEEncoder"}` in its `config.json`.

This module is part of that remote code (`diffusers_scorevae.remote_code` inlines it in place of the package's hub
mixins), so it imports only the standard library and diffusers: a pipeline loaded through the remote code saves the
same files again. In the package, [`ScoreVAEHubMixin`] generates the code from the package's source instead.
"""

from __future__ import annotations

import inspect
import json
import os
import sys

from diffusers import DiffusionPipeline
from diffusers.utils import logging

logger = logging.get_logger(__name__)

PIPELINE_MODULE = "pipeline_scorevae"  # <pipeline folder>/pipeline_scorevae.py
ENCODER_MODULE = "modeling_scorevae_encoder"  # <encoder folder>/modeling_scorevae_encoder.py
AUTO_CLASS = "AutoModel"  # the diffusers auto class an encoder folder's `auto_map` names


class RemoteCodeMixin:
    """
    `save_pretrained` also writes the module this class is defined in ([`~RemoteCodeMixin.remote_code_source`]) and
    the config entries that make diffusers load it with `trust_remote_code=True`; loading ignores the `auto_map` such
    a save writes into an encoder's `config.json`.
    """

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
        Save as diffusers does (see its `save_pretrained` for every argument), then write the remote code beside the
        configs. With `push_to_hub=True` the folder is then pushed with diffusers' `push_to_hub` (`repo_id`,
        `commit_message`, `private`, `token`, `create_pr` are read from `kwargs`), so that the code is uploaded too.
        """
        # named arguments, not *args: diffusers' pipeline saving inspects this signature for `variant` & co
        hub_kwargs = {}
        if push_to_hub:
            hub_keys = ("commit_message", "private", "token", "create_pr")
            hub_kwargs = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
            hub_kwargs["repo_id"] = kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
        save_kwargs = {"safe_serialization": safe_serialization, "variant": variant, **kwargs}
        if max_shard_size is not None:
            save_kwargs["max_shard_size"] = max_shard_size
        super().save_pretrained(save_directory, **save_kwargs)
        if kwargs.get("is_main_process", True):
            self.write_remote_code(save_directory)
        if push_to_hub:
            return self.push_to_hub(safe_serialization=safe_serialization, variant=variant, **hub_kwargs)

    def write_remote_code(self, save_directory: str | os.PathLike):
        """Write the remote code of this object's class into the folder `save_pretrained` wrote: the module and the
        config entries that name it (see the module docstring). A subclass that the module does not define is left
        without remote code, with a warning."""
        class_name = type(self).__name__
        source = type(self).remote_code_source()
        if f"\nclass {class_name}(" not in source:
            logger.warning(
                f"{class_name} is not defined in the ScoreVAE remote code, so plain diffusers cannot load "
                f"{save_directory} with trust_remote_code=True (load it with this class)."
            )
            return
        if isinstance(self, DiffusionPipeline):
            write_pipeline_code(save_directory, class_name, source)
        else:
            write_model_code(save_directory, class_name, source)

    @classmethod
    def remote_code_source(cls) -> str:
        """The source of the self-contained module that defines this class: here, the file it was loaded from (the
        remote code itself)."""
        with open(sys.modules[cls.__module__].__file__, encoding="utf-8") as f:
            return f.read()

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `auto_map` is for diffusers' AutoModel, not an argument of this class
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def _get_signature_types(cls):
        # diffusers checks each component a pipeline loads against its `__init__` annotation. Loaded through remote
        # code, the encoder is the class of `encoder/modeling_scorevae_encoder.py`: the same code as the encoder class
        # the pipeline's own module defines, but another class object, so the check would warn about every load.
        # Annotations naming a class of the pipeline's own module (only remote code has the encoder there) are left
        # to the pipeline's own checks; the package's classes keep diffusers' check.
        signature_types = super()._get_signature_types()
        for name, types in signature_types.items():
            if any(isinstance(t, type) and t.__module__ == cls.__module__ and t is not cls for t in types):
                signature_types[name] = (inspect.Signature.empty,)
        return signature_types


def write_pipeline_code(folder: str | os.PathLike, class_name: str, source: str):
    """Write `source` as `folder/pipeline_scorevae.py` and name it in `folder/model_index.json` (list form
    `[module, class_name]`); a component whose folder holds `modeling_scorevae_encoder.py` is named by that module."""
    _write_text(os.path.join(folder, f"{PIPELINE_MODULE}.py"), source)
    path = os.path.join(folder, "model_index.json")
    model_index = _read_json(path)
    model_index["_class_name"] = [PIPELINE_MODULE, class_name]
    for name, entry in model_index.items():
        has_code = os.path.isfile(os.path.join(folder, name, f"{ENCODER_MODULE}.py"))
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and has_code:
            model_index[name] = [ENCODER_MODULE, entry[1]]
    _write_json(path, model_index)


def write_model_code(folder: str | os.PathLike, class_name: str, source: str):
    """Write `source` as `folder/modeling_scorevae_encoder.py` and name it in the `auto_map` of
    `folder/config.json`."""
    _write_text(os.path.join(folder, f"{ENCODER_MODULE}.py"), source)
    path = os.path.join(folder, "config.json")
    config = _read_json(path)
    config["auto_map"] = {AUTO_CLASS: f"{ENCODER_MODULE}.{class_name}"}
    _write_json(path, config)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data: dict):
    # as diffusers writes configs (`ConfigMixin.to_json_string`)
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_text(path: str, text: str):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
