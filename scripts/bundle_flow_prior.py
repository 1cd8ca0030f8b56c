"""Copy a flow-matching prior trained by `examples/train_prior.py --flow_matching` into the package's bundled models
(float16 weights on disk), with the sampler and sampling `shift` its scheduler is saved with.

    python scripts/bundle_flow_prior.py --prior runs/prior-flow --shift 3.0 --name fashion-mnist-prior-flow \
        --scheduler euler_ancestral

The folder written is the `DDPMPipeline` layout train_prior.py writes (`unet/`, `scheduler/`, `model_index.json`),
with the EMA weights it exported; `shift` only changes where the sampling sigmas sit (SD3's shifted schedule), and
`--scheduler` which diffusers sampler the folder names (`euler`: FlowMatchEulerDiscreteScheduler, the ODE;
`euler_ancestral`: LTXEulerAncestralRFScheduler, the ancestral sampler of rectified flows), not the weights.
"""

import argparse
import glob
import json
import os
import shutil

from diffusers import FlowMatchEulerDiscreteScheduler, LTXEulerAncestralRFScheduler
from safetensors.torch import load_file, save_file

from diffusers_scorevae.bundled import PRETRAINED_DIR


# Copied from scripts/to_fp16.py (each script reads alone; no script imports another)
def to_fp16(folder: str):
    """Rewrite every `*.safetensors` under `folder` (recursively) with float16 floating-point tensors."""
    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        tensors = load_file(path)
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        print(f"{path}: float16")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", required=True, help="A train_prior.py --flow_matching output folder.")
    parser.add_argument("--shift", type=float, default=1.0, help="The saved scheduler's `shift`.")
    parser.add_argument("--scheduler", choices=["euler", "euler_ancestral"], default="euler")
    parser.add_argument("--name", default="fashion-mnist-prior-flow")
    parser.add_argument("--output_dir", default=None, help=f"Default: {PRETRAINED_DIR}/NAME.")
    args = parser.parse_args()

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(args.prior, subfolder="scheduler")
    output = args.output_dir or os.path.join(PRETRAINED_DIR, args.name)
    shutil.rmtree(output, ignore_errors=True)
    shutil.copytree(os.path.join(args.prior, "unet"), os.path.join(output, "unet"))
    sampler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=args.shift)
    if args.scheduler == "euler_ancestral":
        sampler = LTXEulerAncestralRFScheduler.from_config(sampler.config)
    sampler.save_pretrained(os.path.join(output, "scheduler"))
    with open(os.path.join(args.prior, "model_index.json")) as f:
        index = json.load(f)
    index["scheduler"] = ["diffusers", type(sampler).__name__]
    with open(os.path.join(output, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    config_path = os.path.join(output, "unet", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.pop("_name_or_path", None)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    to_fp16(output)
    print(f"wrote {output} ({type(sampler).__name__}, shift {args.shift})")


if __name__ == "__main__":
    main()
