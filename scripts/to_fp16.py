"""Convert a diffusers model folder's safetensors weights to float16 in place (for the bundled, shipped weights)."""

import glob
import sys

from safetensors.torch import load_file, save_file

for folder in sys.argv[1:]:
    for path in glob.glob(f"{folder}/*.safetensors"):
        tensors = load_file(path)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path, metadata={"format": "pt"})
        print(f"{path}: float16")
