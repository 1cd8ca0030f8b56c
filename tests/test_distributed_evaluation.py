"""`scorevae evaluate` and examples/evaluate_scorevae.py on several processes (torchrun, CPU processes on gloo) give
the numbers of one process: each image keeps its noise whatever the split, and the main process computes every
metric on all the images. Real bundled models, five test images (an uneven split), two denoising steps."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from diffusers_scorevae import pretrained_path
from diffusers_scorevae.bundled import bundled_test_images

NUM_IMAGES = 5  # 3 + 2 over two processes
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "evaluate_scorevae.py")
METRICS = ("kl", "l2", "psnr", "ssim", "sharpness", "class_kept", "fd", "l2_mean_of_k", "l2_between_decodes")


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for size in array.shape:
            f.write(int(size).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny Fashion-MNIST test split in the idx format (the first bundled test images)."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    images, labels = bundled_test_images()
    write_idx(folder / "t10k-images-idx3-ubyte", images[:NUM_IMAGES], 0x00000803)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[:NUM_IMAGES], 0x00000801)
    return str(folder)


def run(command, num_processes):
    """`command` in `num_processes` processes started by torchrun (one: the command itself). `--standalone`: the
    rendezvous binds a port the system picks, so no other process can take it between a check and the bind."""
    if num_processes > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
        command = [*torchrun, str(num_processes), *command]
    else:
        command = [sys.executable, *command]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_same_metrics(one, two):
    for key in METRICS:
        if key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key


def test_scorevae_evaluate_on_two_processes_matches_one(tmp_path, data_dir):
    scorevae = shutil.which("scorevae") or os.path.join(os.path.dirname(sys.executable), "scorevae")
    args = ["evaluate", "--fashion-mnist-dir", data_dir, "--num-images", str(NUM_IMAGES)]
    args += ["--num-inference-steps", "2", "--realism", "1", "--num-samples-per-code", "2", "--device", "cpu"]
    results = {}
    for n, batch_size in ((1, 4), (2, 2)):  # the batch size does not matter either
        output = tmp_path / f"{n}.json"
        result = run([scorevae, *args, "--batch-size", str(batch_size), "--output", str(output)], n)
        assert result.stdout.count(f"wrote {output}") == 1  # the main process alone prints and writes
        results[n] = json.load(open(output))
    one, two = results[1], results[2]
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["num_images"] == two["num_images"] == NUM_IMAGES
    assert_same_metrics(one["scorevae"], two["scorevae"])
    assert_same_metrics(one["beta_vae"], two["beta_vae"])
    assert one["scorevae"]["l2_between_decodes"] > 0  # the decodes are samples, not copies


def test_evaluate_scorevae_example_on_two_processes_matches_one(tmp_path, data_dir):
    pipeline = pretrained_path("fashion-mnist")
    args = [EXAMPLE, "--pipelines", pipeline, "--classifier", pretrained_path("fashion-mnist-classifier")]
    args += ["--fashion_mnist_dir", data_dir, "--num_images", "4", "--first_image", "1", "--batch_size", "2"]
    args += ["--settings", "ddim:2:1", "ddpm:2:2", "--realism", "1", "--device", "cpu"]
    results = {}
    for n in (1, 2):
        output = tmp_path / f"{n}.json"
        run([*args, "--output", str(output)], n)
        results[n] = json.load(open(output))
    assert (results[1]["num_processes"], results[2]["num_processes"]) == (1, 2)
    for setting in ("ddim:2:1", "ddpm:2:2"):
        one, two = (results[n]["scorevae"][pipeline][setting] for n in (1, 2))
        assert_same_metrics(one, two)
        assert one["model_evals"] == two["model_evals"] == 2  # the UNet calls of every process, counted once
        assert one["num_inference_steps"] == 2 and two["guidance_scale"] == float(setting[-1])
