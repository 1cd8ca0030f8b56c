#!/usr/bin/env python
"""A ScoreVAEPipeline folder from a training run's checkpoint: the run's prior (unet/, scheduler/) and the checkpoint's
encoder (its EMA weights when the run kept them), or from the training checkpoint closest to a CPU-time budget.

    python scripts/checkpoint_to_pipeline.py RUN_DIR OUT_DIR --cpu_seconds 900    # the checkpoint nearest 900 CPU-s
    python scripts/checkpoint_to_pipeline.py RUN_DIR OUT_DIR --step 1500
"""

import argparse
import json
import os
import re
import shutil

import torch

from diffusers_scorevae import ScoreVAEEncoder


def checkpoint_for_budget(run_dir: str, cpu_seconds: float) -> tuple[int, float]:
    """The saved step whose logged CPU time is nearest `cpu_seconds` (train_log.jsonl has cpu_time every few steps)."""
    logs = [json.loads(line) for line in open(os.path.join(run_dir, "train_log.jsonl"))]
    steps = sorted(int(m.group(1)) for d in os.listdir(run_dir) if (m := re.match(r"^checkpoint-(\d+)$", d)))
    cpu = {entry["step"]: entry["cpu_time"] for entry in logs}
    known = [s for s in steps if s in cpu]
    if not known:
        raise ValueError(f"no checkpoint of {run_dir} has a logged cpu_time")
    best = min(known, key=lambda s: abs(cpu[s] - cpu_seconds))
    return best, cpu[best]


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
    parser.add_argument("output_dir")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--step", type=int)
    group.add_argument("--cpu_seconds", type=float)
    args = parser.parse_args()

    step, cpu = (args.step, None) if args.step is not None else checkpoint_for_budget(args.run_dir, args.cpu_seconds)
    source, encoder = checkpoint_encoder(args.run_dir, step)

    os.makedirs(args.output_dir, exist_ok=True)
    for name in ("unet", "scheduler", "model_index.json"):
        target = os.path.join(args.output_dir, name)
        if not os.path.exists(target):
            src = os.path.join(args.run_dir, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, target)
    encoder.save_pretrained(os.path.join(args.output_dir, "encoder"))
    print(json.dumps({"run": args.run_dir, "step": step, "cpu_time": cpu, "encoder": source}))


if __name__ == "__main__":
    main()
