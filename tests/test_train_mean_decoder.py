"""examples/train_mean_decoder.py: a few steps on tiny real components write a pipeline whose encoder carries the
fitted mean decoder (encoder weights untouched), and a rerun resumes from the checkpoint instead of starting over."""

import json
import os
import sys

import torch
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler
from test_data import write_fashion_mnist

from diffusers_scorevae import BetaVAE, ScoreVAEPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import train_mean_decoder  # noqa: E402


def test_fits_the_decoder_saves_the_pipeline_and_resumes(tmp_path):
    data = tmp_path / "fmnist"
    write_fashion_mnist(data, num_train=32)
    encoder = make_encoder(1, sample_size=28)
    ScoreVAEPipeline(unet=make_unet(1, sample_size=28), scheduler=DDPMScheduler(clip_sample=False),
                     encoder=encoder).save_pretrained(tmp_path / "pipe")  # fmt: skip
    torch.manual_seed(0)
    beta_vae = BetaVAE(sample_size=28, in_channels=1, latent_dim=16, block_out_channels=(8, 16), norm_num_groups=4)
    beta_vae.save_pretrained(tmp_path / "beta-vae")
    out = tmp_path / "out"
    argv = ["--pipeline", str(tmp_path / "pipe"), "--init_decoder", str(tmp_path / "beta-vae"), "--fashion_mnist_dir",
            str(data), "--output_dir", str(out), "--train_batch_size", "8", "--learning_rate", "1e-2",
            "--checkpointing_steps", "2", "--logging_steps", "1", "--device", "cpu", "--realism", "0.3"]  # fmt: skip
    train_mean_decoder.main(train_mean_decoder.parse_args(argv + ["--max_train_steps", "2"]))
    pipe = ScoreVAEPipeline.from_pretrained(out)
    assert pipe.encoder.has_decoder and pipe.decode_defaults["realism"] == 0.3
    torch.testing.assert_close(pipe.encoder.proj_out.weight, encoder.proj_out.weight)  # the encoder stays frozen
    beta_vae = BetaVAE.from_pretrained(tmp_path / "beta-vae")
    assert not torch.equal(pipe.encoder.decoder.conv_out.weight, beta_vae.conv_out.weight)  # the decoder was fitted

    train_mean_decoder.main(train_mean_decoder.parse_args(argv + ["--max_train_steps", "3"]))
    with open(out / "train_log.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3]  # resumed at step 2: one more step, not three
