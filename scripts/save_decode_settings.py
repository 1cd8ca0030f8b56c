#!/usr/bin/env python
"""Save decode settings with a pipeline (in place): the encoder's config carries γ, the log-SNR ranges and realism
(and, with `--mean-decoder`, the encoder with its mean decoder replaces the pipeline's), `model_index.json` the step
count. Weights are rewritten in the dtype they had (the bundles keep float16).

    python scripts/save_decode_settings.py diffusers_scorevae/pretrained/fashion-mnist --num-inference-steps 50 \
        --guidance-scale 3.5 --guidance-log-snr-range -6 inf --inversion-log-snr-range 2 inf \
        --mean-decoder runs/mean-decoder --realism 0.1 --strength-at-realism-zero 0.04
"""

import argparse
import os
import shutil

import torch
from safetensors.torch import load_file

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline


def log_snr_range(values):
    return None if values is None else (float(values[0]), float(values[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="A ScoreVAEPipeline folder, rewritten in place.")
    parser.add_argument("--num-inference-steps", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--guidance-log-snr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("--inversion-log-snr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("--realism", type=float, default=None)
    parser.add_argument("--strength-at-realism-zero", type=float, default=None)
    parser.add_argument(
        "--mean-decoder", default=None, help="A pipeline folder whose encoder carries the mean decoder to use."
    )
    args = parser.parse_args(argv)

    pipe = ScoreVAEPipeline.from_pretrained(args.pipeline)
    weights = os.path.join(args.pipeline, "encoder", "diffusion_pytorch_model.safetensors")
    dtype = next(iter(load_file(weights).values())).dtype  # the dtype on disk (loading gives float32)
    carrier = None
    if args.mean_decoder is not None:  # this pipeline's encoder, with the other one's mean decoder
        carrier = ScoreVAEEncoder.from_pretrained(args.mean_decoder, subfolder="encoder")
        if not carrier.has_decoder:
            raise ValueError(f"--mean-decoder {args.mean_decoder}: its encoder carries no mean decoder.")
        mine, theirs = pipe.encoder.state_dict(), carrier.state_dict()
        if any(not torch.equal(mine[k].float(), theirs[k].float()) for k in mine if not k.startswith("decoder.")):
            raise ValueError(f"--mean-decoder {args.mean_decoder} holds another encoder")
    settings = {
        "guidance_scale": args.guidance_scale,
        "guidance_log_snr_range": log_snr_range(args.guidance_log_snr_range),
        "inversion_log_snr_range": log_snr_range(args.inversion_log_snr_range),
        "realism": args.realism,
        "strength_at_realism_zero": args.strength_at_realism_zero,
    }
    changes = {k: v for k, v in settings.items() if v is not None}
    if carrier is not None:
        changes["decoder_block_out_channels"] = tuple(carrier.config.decoder_block_out_channels)
    new_encoder = pipe.encoder.with_config(**changes)
    if carrier is not None:
        new_encoder.decoder.load_state_dict(carrier.decoder.state_dict())
    steps = args.num_inference_steps if args.num_inference_steps is not None else pipe.config.num_inference_steps
    components = {k: v for k, v in pipe.components.items()}
    components["encoder"] = new_encoder
    pipe = ScoreVAEPipeline(**components, num_inference_steps=steps).to(dtype=dtype)
    tmp = args.pipeline.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    old = args.pipeline.rstrip("/") + ".old"
    os.rename(args.pipeline, old)
    os.rename(tmp, args.pipeline)
    shutil.rmtree(old)
    print(f"{args.pipeline}: {pipe.decode_defaults}")


if __name__ == "__main__":
    main()
