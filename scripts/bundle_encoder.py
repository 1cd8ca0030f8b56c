#!/usr/bin/env python
"""Put a training run's encoder into the bundled Fashion-MNIST pipeline (float16 weights on disk), keeping the bundled
prior, scheduler and the other bundled models:

    python scripts/bundle_encoder.py runs/exp/b_post_bvae --step 5000
"""

import argparse
import os
import shutil

from checkpoint_to_pipeline import checkpoint_encoder  # scripts/ is on sys.path when run as a script
from to_fp16 import to_fp16

from diffusers_scorevae import ScoreVAEEncoder
from diffusers_scorevae.bundled import pretrained_path


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
