"""Pushing to the Hub: a folder of safetensors weights and configs, with the ScoreVAE model card as its README.

diffusers' own pushes call `load_or_create_model_card`, which reads the remote card over the network and writes a
generic one; ours write [`create_model_card`]'s card, and never upload pickled (`.bin`) weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from diffusers.utils import logging
from huggingface_hub import HfApi

from .download import list_folder_files, select_pipeline_files
from .model_card import create_model_card, training_datasets, training_summary

logger = logging.get_logger(__name__)


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


def push_pipeline_to_hub(output_dir: str, repo_id: str, args, metrics: dict | None = None):
    """
    Push the pipeline the training script saved in `output_dir` to `repo_id`, with a model card of its training
    settings (`args`: `beta`, `latent_dim`, `loss_weighting`, `max_train_steps`, the dataset, `hub_token`) and of the
    last logged step and loss of `output_dir/train_log.jsonl`.

    The pipeline's files are uploaded as saved (`model_index.json`, `unet/`, `scheduler/`, `encoder/`: configs and
    safetensors weights) with the card as README.md; not the checkpoints or logs beside them.

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
    with open(os.path.join(output_dir, "encoder", "config.json"), encoding="utf-8") as f:
        saved_latent_dim = json.load(f)["latent_dim"]
    latent_dim = getattr(args, "latent_dim", None)
    if latent_dim is not None and latent_dim != saved_latent_dim:  # --init_encoder decides otherwise
        logger.warning(f"args.latent_dim={latent_dim} but the saved encoder has {saved_latent_dim}.")
    training = training_summary(args, output_dir)
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
            shutil.copyfile(os.path.join(output_dir, path), os.path.join(folder, path))
        return upload_with_model_card(
            folder,
            repo_id,
            model=output_dir,
            commit_message=f"ScoreVAE encoder, step {training.get('steps') or training.get('max_train_steps')}",
            token=getattr(args, "hub_token", None),
            training=training,
            datasets=training_datasets(args),
            metrics=metrics,
        )
