"""Run by test_remote_code.py in a fresh process where `diffusers_scorevae` cannot be imported (a meta-path finder
refuses it before anything else is imported): load saved folders with plain diffusers and `trust_remote_code=True`,
and write what they compute for the test to compare with the package.

Usage: `python tests/remote_load.py SPEC.json OUT_DIR`. SPEC holds {"pipelines": {name: folder}, "images": npz path,
"resave": name, "encoder": folder, "hub": {"repo_id": ..., "cache": ...} or null}. OUT_DIR gets `outputs.npz`
(`<name>/<output>` arrays) and `report.json`.
"""

import importlib.util
import json
import os
import sys


class _NoPackage:
    """This package cannot be imported here: only the folders' remote code can run it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "diffusers_scorevae":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/remote_load.py)", name=name)


sys.meta_path.insert(0, _NoPackage())

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoModel, DiffusionPipeline  # noqa: E402
from remote_calls import decode_defaults, pipeline_outputs  # noqa: E402

torch.set_num_threads(1)  # as the tests' process (conftest.py): the same arithmetic, bit for bit


def error_text(call) -> str | None:
    try:
        call()
    except Exception as error:  # the report says which error it was
        return f"{type(error).__name__}: {error}"
    return None


def main(spec_path: str, out_dir: str):
    with open(spec_path) as f:
        spec = json.load(f)
    images = dict(np.load(spec["images"]))
    try:
        package_spec = importlib.util.find_spec("diffusers_scorevae")
    except ModuleNotFoundError:
        package_spec = None
    report = {"package_importable": package_spec is not None, "pipelines": {}}
    arrays = {}

    for name, folder in spec["pipelines"].items():
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        report["pipelines"][name] = {
            "class": f"{type(pipe).__module__}.{type(pipe).__name__}",
            "encoder_class": f"{type(pipe.encoder).__module__}.{type(pipe.encoder).__name__}",
            "decode_defaults": decode_defaults(pipe),
        }
        for key, value in pipeline_outputs(pipe, images[name]).items():
            arrays[f"{name}/{key}"] = value
        if name == spec["resave"]:
            resaved = os.path.join(out_dir, "resaved")
            pipe.save_pretrained(resaved)
            reloaded = DiffusionPipeline.from_pretrained(resaved, trust_remote_code=True)
            reloaded.set_progress_bar_config(disable=True)
            report["resaved"] = resaved
            image = torch.from_numpy(images[name])
            generator = torch.Generator().manual_seed(0)
            arrays["resaved/saved_defaults"] = reloaded(image=image, generator=generator, output_type="np").images
    report["refusal"] = error_text(lambda: DiffusionPipeline.from_pretrained(spec["pipelines"][spec["resave"]]))

    encoder = AutoModel.from_pretrained(spec["encoder"], trust_remote_code=True)
    report["encoder_class"] = f"{type(encoder).__module__}.{type(encoder).__name__}"
    image = torch.from_numpy(images["encoder"]) * 2 - 1
    with torch.no_grad():
        arrays["encoder/mean"] = encoder(image, encoder.config.clean_log_snr).mean.numpy()
    report["encoder_refusal"] = error_text(lambda: AutoModel.from_pretrained(spec["encoder"]))

    hub = spec.get("hub")
    if hub:  # a repo id in an offline cache (HF_HUB_OFFLINE=1, HF_HUB_CACHE set by the caller)
        from huggingface_hub import snapshot_download

        name = hub["name"]
        report["repo_id_error"] = error_text(
            lambda: arrays.update(
                {"hub_repo_id/saved_defaults": hub_decode(DiffusionPipeline.from_pretrained, hub, images[name])}
            )
        )
        snapshot = snapshot_download(hub["repo_id"], local_files_only=True)
        arrays["hub_snapshot/saved_defaults"] = hub_decode(
            lambda folder, **kwargs: DiffusionPipeline.from_pretrained(snapshot, **kwargs), hub, images[name]
        )

    np.savez(os.path.join(out_dir, "outputs.npz"), **arrays)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


def hub_decode(load, hub, image) -> np.ndarray:
    pipe = load(hub["repo_id"], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(image=torch.from_numpy(image), generator=generator, output_type="np").images


if __name__ == "__main__":
    main(*sys.argv[1:])
