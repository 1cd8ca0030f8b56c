"""Pushing to the Hub: a folder of safetensors weights and configs, with the ScoreVAE model card as its README.

diffusers' own pushes call `load_or_create_model_card`, which reads the remote card over the network and writes a
generic one; ours write [`create_model_card`]'s card, and never upload pickled (`.bin`) weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from huggingface_hub import HfApi

from ..remote_code import write_remote_code
from .download import list_folder_files, select_pipeline_files
from .model_card import (
    TRAINING_SUMMARY_KEYS,
    _accepts_namespace,
    create_model_card,
    training_datasets,
    training_summary,
)


def upload_with_model_card(
    folder: str | os.PathLike,
    repo_id: str,
    model=None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    path_in_repo: str | None = None,
    **card_kwargs,
):
    """
    Create the Hub repo `repo_id` if needed, write the model card of `model` (see [`create_model_card`], which
    `card_kwargs` go to) to `folder/README.md` unless `model` is `None`, and upload `folder`.

    Returns:
        The `huggingface_hub` commit info of the upload.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if model is not None:
        create_model_card(model, repo_id, **card_kwargs).save(os.path.join(folder, "README.md"))
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=path_in_repo,
        commit_message=commit_message or "Upload a ScoreVAE model",
        create_pr=create_pr,
    )


def check_safe_serialization(safe_serialization: bool):
    if not safe_serialization:
        raise ValueError(
            "safe_serialization=False: ScoreVAE publishes safetensors weights only (`.bin` files are pickles, which "
            "other tools may unpickle in full); leave it at True."
        )


def _push_kwargs_from_namespace(namespace) -> dict:
    """The keyword arguments of [`push_pipeline_to_hub`] that its deprecated call `push_pipeline_to_hub(output_dir,
    repo_id, args)` read from the training script's args."""
    return {
        "training": {key: getattr(namespace, key, None) for key in TRAINING_SUMMARY_KEYS},
        "datasets": training_datasets(
            getattr(namespace, "dataset_name", None), getattr(namespace, "fashion_mnist_dir", None)
        ),
        "token": getattr(namespace, "hub_token", None),
    }


@_accepts_namespace(2, _push_kwargs_from_namespace, later=("metrics",))
def push_pipeline_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    training: dict | None = None,
    datasets: list[str] | None = None,
    metrics: dict | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
):
    r"""
    Push the pipeline a training run saved in `output_dir` to `repo_id`, with a model card (see
    [`create_model_card`]) of the saved configs, the decode settings saved with it, the training settings and the
    last logged step and loss of `output_dir/train_log.jsonl`.

    The pipeline's files are uploaded as saved (`model_index.json`, `unet/`, `scheduler/`, `encoder/`, `vae/` when
    present: configs and safetensors weights) with the card as README.md and the remote code of this version of the
    package ([`~diffusers_scorevae.remote_code.write_remote_code`], so that plain diffusers loads the repo with
    `trust_remote_code=True`, however old the folder); not the checkpoints or logs beside them.

    Args:
        output_dir (`str` or `os.PathLike`):
            The folder the pipeline was saved in (`save_pretrained`, or a training run's `--output_dir`).
        repo_id (`str`):
            The Hub repo to create (if needed) and upload to.
        training (`dict`, *optional*):
            The run's settings, as [`training_summary`]'s keyword arguments (`beta`, `loss_weighting`,
            `timestep_sampling`, `max_train_steps`, `learning_rate`, `train_batch_size`, `use_ema`).
        datasets (`List[str]`, *optional*):
            Hub dataset ids of the training data (see [`training_datasets`]).
        metrics (`dict`, *optional*):
            Evaluation numbers for the card.
        token (`str`, *optional*):
            The Hub token; defaults to the logged-in one.
        private (`bool`, *optional*):
            Whether a repo created here is private.
        commit_message (`str`, *optional*):
            Defaults to "ScoreVAE encoder, step N" (the last logged step, else the planned `max_train_steps`).

    Returns:
        The `huggingface_hub` commit info of the upload.
    """
    with open(os.path.join(output_dir, "model_index.json"), encoding="utf-8") as f:
        model_index = json.load(f)
    files = select_pipeline_files(
        list_folder_files(output_dir),
        model_index,
        required_components=("unet", "scheduler", "encoder"),
        use_safetensors=True,
        name=output_dir,
    )
    training = training_summary(output_dir, **(training or {}))
    step = training.get("steps") or training.get("max_train_steps")
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
            shutil.copyfile(os.path.join(output_dir, path), os.path.join(folder, path))
        write_remote_code(folder)
        return upload_with_model_card(
            folder,
            repo_id,
            model=output_dir,
            commit_message=commit_message or f"ScoreVAE encoder, step {step}",
            private=private,
            token=token,
            training=training,
            datasets=datasets,
            metrics=metrics,
        )
