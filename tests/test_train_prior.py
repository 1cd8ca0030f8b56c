import json
import os
import sys

import pytest
import torch
from diffusers import DDPMPipeline
from test_data import write_fashion_mnist

from diffusers_scorevae.models.classifier import FashionMNISTClassifier

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import evaluate_prior  # noqa: E402
import train_prior  # noqa: E402

TINY = [
    "--block_out_channels", "8,16",
    "--attention_levels", "1",
    "--attention_head_dim", "8",
    "--norm_num_groups", "4",
    "--train_batch_size", "8",
    "--checkpointing_steps", "2",
    "--logging_steps", "1",
]  # fmt: skip


def read_log(output_dir):
    with open(os.path.join(output_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_resume_and_load(tmp_path):
    data_dir, output_dir = str(tmp_path / "data"), str(tmp_path / "prior")
    write_fashion_mnist(data_dir)
    common = TINY + ["--fashion_mnist_dir", data_dir, "--output_dir", output_dir, "--use_ema"]

    train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "3"]))
    assert [line["step"] for line in read_log(output_dir)] == [2, 3]
    pipeline = DDPMPipeline.from_pretrained(output_dir)
    assert pipeline.unet.config.sample_size == 28 and pipeline.unet.config.in_channels == 1
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 28, 28, 1)

    # the same command with more steps continues from the checkpoint's step
    train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "5"]))
    log = read_log(output_dir)
    assert [line["step"] for line in log] == [2, 3, 4, 5]
    assert log[-1]["images_seen"] == 5 * 8
    assert log[-1]["wall_seconds"] >= log[1]["wall_seconds"]
    with open(os.path.join(output_dir, "checkpoint", "training_state.json")) as f:
        assert json.load(f)["ema"]["optimization_step"] == 5
    assert not os.path.exists(os.path.join(output_dir, "checkpoint.tmp"))
    assert not os.path.exists(os.path.join(output_dir, "pipeline.tmp"))
    assert os.path.isfile(os.path.join(output_dir, "unet", "diffusion_pytorch_model.safetensors"))
    DDPMPipeline.from_pretrained(output_dir)


def test_resume_is_exact(tmp_path):
    """Stopping at step 2 and resuming to 4 gives the (EMA) weights of an uninterrupted run to 4."""
    data_dir = str(tmp_path / "data")
    write_fashion_mnist(data_dir)
    common = TINY + ["--fashion_mnist_dir", data_dir, "--use_ema"]
    interrupted, straight = str(tmp_path / "interrupted"), str(tmp_path / "straight")
    train_prior.main(train_prior.parse_args(common + ["--output_dir", interrupted, "--max_train_steps", "2"]))
    train_prior.main(train_prior.parse_args(common + ["--output_dir", interrupted, "--max_train_steps", "4"]))
    train_prior.main(train_prior.parse_args(common + ["--output_dir", straight, "--max_train_steps", "4"]))
    unet_a = DDPMPipeline.from_pretrained(interrupted).unet
    unet_b = DDPMPipeline.from_pretrained(straight).unet
    for (name, a), b in zip(unet_a.state_dict().items(), unet_b.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_resume_refuses_other_architecture(tmp_path):
    data_dir, output_dir = str(tmp_path / "data"), str(tmp_path / "prior")
    write_fashion_mnist(data_dir)
    common = TINY + ["--fashion_mnist_dir", data_dir, "--output_dir", output_dir]
    train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "1"]))
    with pytest.raises(ValueError, match="prediction_type"):
        train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "2", "--prediction_type", "sample"]))


def test_recovers_from_kill_between_renames(tmp_path):
    data_dir, output_dir = str(tmp_path / "data"), str(tmp_path / "prior")
    write_fashion_mnist(data_dir)
    common = TINY + ["--fashion_mnist_dir", data_dir, "--output_dir", output_dir]
    train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "2"]))
    # a kill after parking the old checkpoint, before moving the new one in; and a half-written one
    os.rename(os.path.join(output_dir, "checkpoint"), os.path.join(output_dir, "checkpoint.old"))
    os.makedirs(os.path.join(output_dir, "checkpoint.tmp", "unet"))
    train_prior.main(train_prior.parse_args(common + ["--max_train_steps", "3"]))
    assert [line["step"] for line in read_log(output_dir)] == [2, 3]
    assert sorted(os.listdir(output_dir)) == ["checkpoint", "model_index.json", "scheduler", "train_log.jsonl", "unet"]


def test_init_unet_continues_from_trained_weights(tmp_path):
    """--init_unet starts a new run from a finished one's weights (fp16 on disk is fine) and counts total steps."""
    data_dir, first, second = str(tmp_path / "data"), str(tmp_path / "first"), str(tmp_path / "second")
    write_fashion_mnist(data_dir)
    common = TINY + ["--fashion_mnist_dir", data_dir]
    train_prior.main(train_prior.parse_args(common + ["--output_dir", first, "--max_train_steps", "3"]))
    trained = DDPMPipeline.from_pretrained(first).unet
    trained.to(torch.float16).save_pretrained(os.path.join(first, "unet"))  # as the bundle stores it

    # zero steps with a learning rate of 0 keeps the loaded weights exactly
    args = common + ["--output_dir", second, "--init_unet", first, "--max_train_steps", "1", "--learning_rate", "0"]
    train_prior.main(train_prior.parse_args(args))
    continued = DDPMPipeline.from_pretrained(second).unet
    assert continued.dtype == torch.float32
    for (name, a), b in zip(trained.state_dict().items(), continued.state_dict().values()):
        torch.testing.assert_close(a.float(), b, msg=name)
    assert read_log(second)[-1]["total_steps"] == 3 + 1

    with pytest.raises(ValueError, match="init_unet"):
        bad = common + ["--output_dir", str(tmp_path / "bad"), "--init_unet", first, "--max_train_steps", "1"]
        train_prior.main(train_prior.parse_args(bad + ["--prediction_type", "v_prediction"]))


def test_bad_attention_level():
    with pytest.raises(ValueError, match="attention_levels"):
        train_prior.parse_args(["--block_out_channels", "8,16", "--attention_levels", "2"])


def test_evaluate_prior_smoke(tmp_path):
    data_dir, output_dir = str(tmp_path / "data"), str(tmp_path / "prior")
    write_fashion_mnist(data_dir)
    train_prior.main(train_prior.parse_args(TINY + ["--fashion_mnist_dir", data_dir, "--output_dir", output_dir,
                                                    "--max_train_steps", "1"]))  # fmt: skip
    torch.manual_seed(0)
    FashionMNISTClassifier(block_out_channels=(4, 8), feature_dim=8).save_pretrained(tmp_path / "classifier")
    for scheduler in ("ddpm", "ddim"):
        eval_dir = str(tmp_path / f"eval-{scheduler}")
        args = evaluate_prior.parse_args(
            ["--pipeline", output_dir, "--classifier", str(tmp_path / "classifier"), "--fashion_mnist_dir", data_dir,
             "--num_samples", "6", "--batch_size", "4", "--num_inference_steps", "2", "--scheduler", scheduler,
             "--output_dir", eval_dir]
        )  # fmt: skip
        metrics = evaluate_prior.main(args)
        assert metrics["num_samples"] == 6 and metrics["steps"] == 2 and metrics["fd"] >= 0
        assert metrics["scheduler_config"]["clip_sample"] is True  # the saved DDPMScheduler's, passed on unchanged
        assert os.path.isfile(os.path.join(eval_dir, "samples.png"))
        with open(os.path.join(eval_dir, "metrics.json")) as f:
            assert json.load(f)["scheduler"] == scheduler


def test_flow_matching_prior_trains_resumes_and_decodes(tmp_path):
    """--flow_matching: the SD3 recipe (float timesteps σ·T, target ε − x_0) writes a DDPMPipeline folder with a
    FlowMatchEulerDiscreteScheduler that ScoreVAEPipeline wraps; it can start from a DDPM prior's weights, and resumes
    exactly; a checkpoint of the other family is refused."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

    data_dir = str(tmp_path / "data")
    write_fashion_mnist(data_dir)
    ddpm = str(tmp_path / "ddpm")
    train_prior.main(train_prior.parse_args(TINY + ["--fashion_mnist_dir", data_dir, "--output_dir", ddpm,
                                                    "--max_train_steps", "1"]))  # fmt: skip
    common = TINY + ["--fashion_mnist_dir", data_dir, "--use_ema", "--flow_matching", "--shift", "2.0"]
    common += ["--weighting_scheme", "logit_normal", "--init_unet", ddpm]
    interrupted, straight = str(tmp_path / "interrupted"), str(tmp_path / "straight")
    train_prior.main(train_prior.parse_args(common + ["--output_dir", interrupted, "--max_train_steps", "2"]))
    train_prior.main(train_prior.parse_args(common + ["--output_dir", interrupted, "--max_train_steps", "4"]))
    train_prior.main(train_prior.parse_args(common + ["--output_dir", straight, "--max_train_steps", "4"]))
    a, b = DDPMPipeline.from_pretrained(interrupted), DDPMPipeline.from_pretrained(straight)
    assert isinstance(a.scheduler, FlowMatchEulerDiscreteScheduler) and a.scheduler.config.shift == 2.0
    for (name, x), y in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    start = DDPMPipeline.from_pretrained(ddpm).unet.state_dict()
    assert any(not torch.equal(x, start[name]) for name, x in a.unet.state_dict().items())  # it trained

    # the loss: the UNet is called with the scheduler's float timesteps and regressed on ε − x_0
    args = train_prior.parse_args(common + ["--output_dir", straight])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=2.0)
    clean, noise = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 1, 28, 28)
    noisy, timesteps, target, weights = train_prior.flow_matching_batch(
        scheduler, clean, noise, args, torch.Generator().manual_seed(0)
    )
    sigma = (timesteps / 1000)[:, None, None, None]
    assert timesteps.is_floating_point() and torch.isin(timesteps, scheduler.timesteps).all()
    torch.testing.assert_close(noisy, (1 - sigma) * clean + sigma * noise)
    torch.testing.assert_close(target, noise - clean)
    assert torch.equal(weights, torch.ones(4))

    # ScoreVAEPipeline wraps the folder with an encoder and decodes through it
    torch.manual_seed(0)
    encoder = ScoreVAEEncoder(sample_size=28, in_channels=1, latent_dim=4, block_out_channels=(8, 16),
                              down_block_types=("DownBlock2D", "DownBlock2D"), norm_num_groups=4)  # fmt: skip
    pipe = ScoreVAEPipeline.from_pretrained(straight, encoder=encoder)
    out = pipe(image=torch.rand(1, 1, 28, 28), num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 28, 28, 1)

    # resuming a flow checkpoint as a DDPM run (or the reverse) is refused
    with pytest.raises(ValueError, match="--flow_matching"):
        ddpm_args = TINY + ["--fashion_mnist_dir", data_dir, "--use_ema", "--output_dir", straight]
        train_prior.main(train_prior.parse_args(ddpm_args + ["--max_train_steps", "5"]))
