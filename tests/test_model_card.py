"""The model card's decode settings, and the hub helpers' keyword-argument calls (with the deprecated argparse calls
still forwarded for one release)."""

import json
import shutil
from argparse import Namespace
from types import SimpleNamespace

import pytest
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler
from huggingface_hub import HfApi, ModelCard

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.hub import create_model_card, push_pipeline_to_hub, training_datasets, training_summary
from diffusers_scorevae.hub.model_card import decode_settings_section


def saved_pipeline(folder, encoder_settings=None, pipeline_settings=None):
    """A tiny pipeline saved in `folder`, with decode settings written into its saved configs (as JSON)."""
    ScoreVAEPipeline(unet=make_unet(), scheduler=DDPMScheduler(), encoder=make_encoder()).save_pretrained(folder)
    for path, settings in (("encoder/config.json", encoder_settings), ("model_index.json", pipeline_settings)):
        config = json.loads((folder / path).read_text())
        (folder / path).write_text(json.dumps({**config, **(settings or {})}))
    return folder


@pytest.fixture
def uploads(monkeypatch, tmp_path):
    captured = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        folder = tmp_path / "uploaded" / str(len(captured))
        shutil.copytree(folder_path, folder)
        captured.append(SimpleNamespace(repo_id=repo_id, folder=folder, message=commit_message))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return captured


def test_card_states_the_saved_decode_settings(tmp_path):
    folder = saved_pipeline(
        tmp_path / "p",
        encoder_settings={
            "guidance_scale": 3.5,
            "guidance_log_snr_range": [-6.0, None],
            "inversion_log_snr_range": [2.0, None],
            "realism": 0.5,
        },
        pipeline_settings={"num_inference_steps": 50},
    )
    text = create_model_card(folder, "org/x").text
    assert "## Decoding" in text
    for row in (
        "| inference steps | 50 |",
        "| guidance scale γ | 3.5 |",
        "| encoder term at log-SNR in | [-6, ∞] |",
        "| inversion guided at log-SNR in | [2, ∞] |",
        "| realism (1: a posterior sample from noise; 0: the mean estimate) | 0.5 |",
    ):
        assert row in text
    assert "num_inference_steps=50" not in text  # the usage snippet relies on the saved settings


def test_card_without_decode_settings_says_so(tmp_path):
    text = create_model_card(saved_pipeline(tmp_path / "p"), "org/x").text
    assert "saves no decode settings" in text and "| guidance scale γ |" not in text


def test_encoder_card_reads_the_encoder_config_only():
    lines = decode_settings_section({"guidance_scale": 2.0, "guidance_log_snr_range": [float("-inf"), 4.0]})
    assert "| guidance scale γ | 2 |" in lines and "| encoder term at log-SNR in | [−∞, 4] |" in lines
    assert not [line for line in lines if "inference steps" in line]


def test_training_summary_takes_keywords(tmp_path):
    (tmp_path / "train_log.jsonl").write_text(json.dumps({"step": 40, "loss": 0.25}) + "\n")
    summary = training_summary(tmp_path, beta=0.02, use_ema=True)
    assert summary["beta"] == 0.02 and summary["use_ema"] is True and summary["loss_weighting"] is None
    assert (summary["steps"], summary["final_loss"]) == (40, 0.25)
    assert training_datasets(fashion_mnist_dir="/data") == ["zalando-datasets/fashion_mnist"]
    assert training_datasets("org/data") == ["org/data"] and training_datasets() is None


def test_deprecated_namespace_calls_forward(tmp_path):
    args = Namespace(beta=0.02, loss_weighting="simple", dataset_name=None, fashion_mnist_dir="/data")
    with pytest.warns(FutureWarning, match="training_summary"):
        assert training_summary(args, str(tmp_path)) == training_summary(tmp_path, beta=0.02, loss_weighting="simple")
    with pytest.warns(FutureWarning, match="training_datasets"):
        assert training_datasets(args) == ["zalando-datasets/fashion_mnist"]


def test_push_pipeline_to_hub_takes_keywords(uploads, tmp_path):
    folder = saved_pipeline(tmp_path / "run", encoder_settings={"guidance_scale": 3.5})
    push_pipeline_to_hub(folder, "org/run", training={"beta": 0.05, "max_train_steps": 9}, datasets=["org/data"])
    (upload,) = uploads
    card = ModelCard((upload.folder / "README.md").read_text())
    assert card.data.to_dict()["datasets"] == ["org/data"] and upload.message == "ScoreVAE encoder, step 9"
    assert "| β (KL weight) | 0.05 |" in card.text and "| guidance scale γ | 3.5 |" in card.text


def test_push_pipeline_to_hub_deprecated_namespace_call(uploads, tmp_path):
    folder = saved_pipeline(tmp_path / "run")
    args = Namespace(beta=0.05, max_train_steps=9, dataset_name="org/data", hub_token=None)
    with pytest.warns(FutureWarning, match="push_pipeline_to_hub"):
        push_pipeline_to_hub(str(folder), "org/run", args, {"L2": 2.0})
    card = ModelCard((uploads[0].folder / "README.md").read_text())
    assert card.data.to_dict()["datasets"] == ["org/data"]
    assert "| β (KL weight) | 0.05 |" in card.text and "| L2 | 2 |" in card.text
