"""Convert a diffusers model folder's safetensors weights to float16 in place (for the bundled, shipped weights).

    python scripts/to_fp16.py FOLDER [FOLDER ...]
"""

import glob
import os
import sys

from safetensors.torch import load_file, save_file


def to_fp16(folder: str):
    """Rewrite every `*.safetensors` under `folder` (recursively) with float16 floating-point tensors."""
    for path in glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True):
        tensors = load_file(path)
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        print(f"{path}: float16")


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        to_fp16(folder)
