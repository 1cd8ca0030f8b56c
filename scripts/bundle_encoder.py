#!/usr/bin/env python
"""Put a training run's encoder into the bundled Fashion-MNIST pipeline (float16 weights on disk), keeping the bundled
prior, scheduler and the other bundled models:

    python scripts/bundle_encoder.py runs/exp/b_post_bvae --step 5000
"""

import argparse
import glob
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from diffusers_scorevae import ScoreVAEEncoder
from diffusers_scorevae.bundled import pretrained_path


# Copied from scripts/to_fp16.py (each script reads alone; no script imports another)
def to_fp16(folder: str):
    """Rewrite every `*.safetensors` under `folder` (recursively) with float16 floating-point tensors."""
    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        tensors = load_file(path)
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        print(f"{path}: float16")


# Copied from scripts/checkpoint_to_pipeline.py
def checkpoint_encoder(run_dir: str, step: int, **config_overrides) -> tuple[str, ScoreVAEEncoder]:
    """The encoder of `run_dir/checkpoint-{step}` (its EMA weights when kept), as a plain float32 ScoreVAEEncoder."""
    checkpoint = os.path.join(run_dir, f"checkpoint-{step}")
    source = os.path.join(checkpoint, "encoder_ema")
    if not os.path.isdir(source):
        source = os.path.join(checkpoint, "encoder")
    # EMAModel writes its own settings into the config: rebuild a plain encoder from the architecture keys
    config = {k: v for k, v in ScoreVAEEncoder.load_config(source).items() if not k.startswith("_")}
    architecture = ScoreVAEEncoder.extract_init_dict(config)[0] | config_overrides
    encoder = ScoreVAEEncoder.from_config(architecture)
    encoder.load_state_dict(ScoreVAEEncoder.from_pretrained(source, torch_dtype=torch.float32).state_dict())
    return source, encoder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int, required=True)
    args = parser.parse_args()

    target = os.path.join(pretrained_path("fashion-mnist"), "encoder")
    # the bundled encoder's prior is the bundled prior (not the training machine's folder)
    record = dict(ScoreVAEEncoder.load_config(target).get("prior") or {})
    source, encoder = checkpoint_encoder(args.run_dir, args.step, prior=record)
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save_pretrained(tmp)
    to_fp16(tmp)
    shutil.rmtree(target)
    os.rename(tmp, target)
    print(f"bundled {source} -> {target}")


if __name__ == "__main__":
    main()
