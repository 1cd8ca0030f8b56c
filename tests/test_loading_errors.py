"""Loading that fails, fails clearly: each error names the file, folder or repo and says what to do (a damaged
weights file, a folder that is not a saved pipeline, a Hub id in no cache while offline)."""

import json
import os
import shutil

import huggingface_hub
import pytest
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler
from hub_cache import go_offline, write_cached_repo

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.cli import main
from diffusers_scorevae.hub.download import check_safetensors_file


@pytest.fixture
def pipeline_folder(tmp_path):
    folder = tmp_path / "pipeline"
    scheduler = DDPMScheduler(num_train_timesteps=100)
    ScoreVAEPipeline(unet=make_unet(1), scheduler=scheduler, encoder=make_encoder(1)).save_pretrained(folder)
    return folder


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_safetensors_in_a_pipeline_folder(pipeline_folder, capsys):
    weights = pipeline_folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert check_safetensors_file(weights) is None
    truncate(weights)
    with pytest.raises(OSError, match="truncated") as error:
        ScoreVAEPipeline.from_pretrained(pipeline_folder)
    message = str(error.value)
    assert str(weights) in message and "save the pipeline again" in message
    # the command says the same, without a traceback
    assert main(["demo", "--pipeline", str(pipeline_folder), "--num-images", "2", "--device", "cpu"]) == 2
    assert f"error: The weights file {weights} is damaged" in capsys.readouterr().err


def test_corrupted_safetensors_header_and_pickled_weights(pipeline_folder, tmp_path):
    weights = pipeline_folder / "encoder" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[8:16] = b"garbage!"  # the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError, match="not a safetensors header") as error:
        ScoreVAEPipeline.from_pretrained(pipeline_folder)
    assert str(weights) in str(error.value)
    weights.write_bytes(original + b"\0" * 10)
    assert "extra bytes" in check_safetensors_file(weights)

    pickled = tmp_path / "pickled"
    ScoreVAEPipeline.from_pretrained(pipeline_folder, encoder=make_encoder(1)).save_pretrained(
        pickled, safe_serialization=False
    )
    truncate(pickled / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="damaged") as error:
        ScoreVAEPipeline.from_pretrained(pickled)
    assert str(pickled / "unet" / "diffusion_pytorch_model.bin") in str(error.value)


def test_a_folder_without_model_index(pipeline_folder, tmp_path):
    os.remove(pipeline_folder / "model_index.json")
    with pytest.raises(FileNotFoundError, match="has no model_index.json") as error:
        ScoreVAEPipeline.from_pretrained(pipeline_folder)
    assert str(pipeline_folder) in str(error.value) and "save_pretrained" in str(error.value)
    # a training checkpoint (encoder/ alone) and an encoder folder are told apart
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(pipeline_folder / "encoder", checkpoint / "encoder")
    with pytest.raises(FileNotFoundError, match="training checkpoint.*--output_dir"):
        ScoreVAEPipeline.from_pretrained(checkpoint)
    with pytest.raises(FileNotFoundError, match=r"ScoreVAEEncoder.from_pretrained.*encoder=encoder"):
        ScoreVAEPipeline.from_pretrained(checkpoint / "encoder")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ScoreVAEPipeline.from_pretrained(str(tmp_path / "no" / "such" / "folder"))


def test_hub_id_in_no_cache_while_offline(tmp_path, monkeypatch, pipeline_folder):
    cache = tmp_path / "cache"
    go_offline(monkeypatch, cache, tmp_path / "hf_home")
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError) as error:
        ScoreVAEPipeline.from_pretrained("org/never-downloaded")
    message = str(error.value)
    assert "org/never-downloaded is not in the Hugging Face cache" in message and str(cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download org/never-downloaded" in message
    assert main(["demo", "--pipeline", "org/never-downloaded", "--device", "cpu"]) == 2

    # a snapshot that holds model_index.json but not the weights (only listed, never downloaded)
    index = (pipeline_folder / "model_index.json").read_bytes()
    files = {p.relative_to(pipeline_folder).as_posix(): p.read_bytes() for p in pipeline_folder.rglob("*.*")}
    weights = {path: data for path, data in files.items() if path.endswith(".safetensors")}
    configs = {path: data for path, data in files.items() if path.endswith(".json") and path != "model_index.json"}
    write_cached_repo(cache, "org/partial", files={"model_index.json": index, **configs}, remote_only=weights)
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError, match="org/partial.*unet/diffusion_pytorch"):
        ScoreVAEPipeline.from_pretrained("org/partial")

    # a cached file damaged after the download: download it again
    write_cached_repo(cache, "org/damaged", pipeline_folder)
    snapshot = next((cache / "models--org--damaged" / "snapshots").iterdir())
    blob = (snapshot / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    truncate(blob)
    with pytest.raises(OSError, match=r"truncated.*from_pretrained\('org/damaged', force_download=True\)"):
        ScoreVAEPipeline.from_pretrained("org/damaged")


def test_variant_error_is_diffusers_own(pipeline_folder):
    with open(pipeline_folder / "model_index.json") as f:
        assert json.load(f)["_class_name"] == ["pipeline_scorevae", "ScoreVAEPipeline"]
    with pytest.raises(ValueError) as error:
        ScoreVAEPipeline.from_pretrained(pipeline_folder, variant="fp16")
    # word for word what DiffusionPipeline.from_pretrained raises (diffusers/pipelines/pipeline_utils.py)
    assert str(error.value).startswith(
        "You are trying to load the model files of the `variant=fp16`, but no such modeling files are available."
    )
