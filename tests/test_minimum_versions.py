"""The smoke tier that runs at the declared minimum versions: `.ci/run` installs setup.cfg's floors (`>=` read as `==`,
.ci/minimum_versions.py) in a second virtual environment and runs `pytest tests/test_minimum_versions.py -m
minimum_versions` there; the default test command leaves the tier out (`addopts` in pyproject.toml).

What it checks is what a user does first: the demo, a save/load round trip, a decode (with an LMS scheduler too, which
needs scipy), plain diffusers loading the saved folder through its remote code, loading by repo id from an offline
Hub cache, and the evaluation's accelerate state.
"""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import DDIMScheduler, DiffusionPipeline, LMSDiscreteScheduler
from hub_cache import go_offline, write_cached_repo

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.evaluation import process_state
from diffusers_scorevae.remote_code import check_remote_code

pytestmark = pytest.mark.minimum_versions

def declared_floors() -> dict[str, str]:
    """{distribution: version} of setup.cfg's install_requires, read by .ci/minimum_versions.py (what .ci/run
    installs)."""
    path = Path(__file__).parents[1] / ".ci" / "minimum_versions.py"
    spec = importlib.util.spec_from_file_location("minimum_versions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.floors()


@pytest.mark.skipif(
    os.environ.get("SCOREVAE_MINIMUM_VERSIONS") != "1",
    reason="the environment of .ci/run's minimum-versions step (SCOREVAE_MINIMUM_VERSIONS=1) holds the floors",
)
def test_the_installed_versions_are_the_declared_floors():
    floors = declared_floors()
    assert {"torch", "diffusers", "huggingface-hub", "accelerate", "safetensors"} <= set(floors)
    installed = {name: importlib.metadata.version(name).split("+")[0] for name in floors}  # 2.13.0+cpu: 2.13.0
    assert installed == floors
    assert importlib.util.find_spec("transformers") is None  # not required, so not installed


def test_the_demo_runs(tmp_path):
    """`scorevae demo` as the README runs it: the console script, the bundled models, no network."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    scorevae = Path(sys.executable).parent / "scorevae"
    result = subprocess.run(
        [str(scorevae), "demo", "--output-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "reconstructions.png").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 16


@pytest.mark.parametrize("scheduler", [DDIMScheduler, LMSDiscreteScheduler])  # LMS: scipy
def test_a_saved_pipeline_loads_and_decodes_the_same(tmp_path, scheduler):
    pipe = ScoreVAEPipeline(unet=make_unet(3), scheduler=scheduler(), encoder=make_encoder(3))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    assert check_remote_code(tmp_path) == []
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {"num_inference_steps": 3, "output_type": "pt"}
    expected = pipe(image=images, generator=torch.manual_seed(0), **kwargs).images
    assert torch.equal(loaded(image=images, generator=torch.manual_seed(0), **kwargs).images, expected)

    # plain diffusers, through the folder's remote code (the package is importable here, but the code never uses it)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert not isinstance(remote, ScoreVAEPipeline)
    assert torch.equal(remote(image=images, generator=torch.manual_seed(0), **kwargs).images, expected)


def test_a_pipeline_loads_by_repo_id_from_an_offline_cache(tmp_path, monkeypatch):
    """The package's Hub code (huggingface_hub's cache, offline) at the floor of huggingface_hub."""
    pipe = ScoreVAEPipeline(unet=make_unet(3), scheduler=DDIMScheduler(), encoder=make_encoder(3))
    pipe.save_pretrained(tmp_path / "saved")
    write_cached_repo(tmp_path / "cache", "org/smoke", tmp_path / "saved")
    go_offline(monkeypatch, tmp_path / "cache", tmp_path / "hf_home")
    loaded = ScoreVAEPipeline.from_pretrained("org/smoke")
    for name in ("unet", "encoder"):
        expected = getattr(pipe, name).state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in getattr(loaded, name).state_dict().items())


def test_the_evaluation_runs_on_accelerate():
    state = process_state("cpu")
    assert state.num_processes == 1 and state.device.type == "cpu"
