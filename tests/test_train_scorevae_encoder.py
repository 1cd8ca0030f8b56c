"""examples/train_scorevae_encoder.py end to end on a tiny saved prior and an image folder: a few steps end in a
loadable pipeline and checkpoints; a run killed with SIGKILL resumes to the same weights; two processes work; a
flow-matching prior trains with both objectives, validates, saves and resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_unet
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_scorevae_encoder.py")


@pytest.fixture(scope="module")
def prior_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    DDPMPipeline(unet=make_unet(3), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(root / "prior")
    rng = np.random.default_rng(0)
    os.makedirs(root / "images")
    for i in range(48):  # RGB and grayscale, larger than the prior: resized and cropped to 8x8
        mode, shape = ("RGB", (12, 10, 3)) if i % 2 else ("L", (10, 12))
        PIL.Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(root / "images" / f"{i}.png")
    return root


def base_args(root, output_dir, steps, *extra, prior="prior"):
    return [
        "--pretrained_model_name_or_path", str(root / prior),
        "--train_data_dir", str(root / "images"),
        "--output_dir", str(output_dir),
        "--train_batch_size", "4",
        "--max_train_steps", str(steps),
        "--encoder_block_out_channels", "8,16",
        "--encoder_norm_num_groups", "4",
        "--latent_dim", "8",
        "--seed", "0",
        "--logger", "none",
        "--random_flip",
        *extra,
    ]  # fmt: skip


def run_script(args, env=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, **kwargs)


def encoder_weights(path):
    return {k: v.clone() for k, v in ScoreVAEEncoder.from_pretrained(path).state_dict().items()}


def test_smoke_run_writes_a_loadable_pipeline_and_checkpoints(prior_and_images, tmp_path):
    out = tmp_path / "run"
    result = run_script(
        base_args(
            prior_and_images, out, 4,
            "--checkpointing_steps", "2", "--checkpoints_total_limit", "1", "--use_ema", "--logging_steps", "1",
        )
        + ["--validation_steps", "4", "--validation_inference_steps", "2", "--num_validation_images", "2"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint")) == ["checkpoint-4"]  # total limit 1
    assert os.path.exists(out / "checkpoint-4" / "encoder" / "diffusion_pytorch_model.safetensors")
    assert os.path.exists(out / "checkpoint-4" / "encoder_ema" / "diffusion_pytorch_model.safetensors")
    assert os.path.exists(out / "validation" / "step-0000004.png")
    pipe = ScoreVAEPipeline.from_pretrained(out)
    assert pipe.encoder.config.prior["name_or_path"] == os.path.abspath(prior_and_images / "prior")
    assert pipe.encoder.config.latent_dim == 8
    assert not any(p.endswith(".bin") for p in os.listdir(out / "encoder"))
    # with --use_ema the published encoder is the EMA one, not the raw weights
    ema = encoder_weights(out / "checkpoint-4" / "encoder_ema")
    raw = encoder_weights(out / "checkpoint-4" / "encoder")
    published = pipe.encoder.state_dict()
    assert all(torch.equal(published[k], ema[k]) for k in published)
    assert any(not torch.equal(published[k], raw[k]) for k in published)
    images = pipe(image=torch.rand(2, 3, 8, 8), num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 8, 8)
    logs = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert {"step", "loss", "score_loss", "prior_loss", "kl"} <= set(logs[-1])


def test_sigkill_then_resume_reaches_the_same_weights(prior_and_images, tmp_path):
    steps = 30
    straight = run_script(base_args(prior_and_images, tmp_path / "a", steps, "--checkpointing_steps", "10"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the run is killed between checkpoint-20 and its end: the poll below races the training, and where other jobs
    # load the machine the run may end before the kill lands; it then runs again (the kill is the test, not its timing)
    for _ in range(3):
        shutil.rmtree(killed_dir, ignore_errors=True)
        process = subprocess.Popen(
            [sys.executable, SCRIPT, *base_args(prior_and_images, killed_dir, steps, "--checkpointing_steps", "10")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=lambda: os.nice(10),  # the poll wakes before the training gets far
        )
        deadline = time.time() + 900  # a bound on hanging
        while not os.path.isdir(killed_dir / "checkpoint-20") and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not os.path.exists(killed_dir / "checkpoint-30"):
            break
    assert os.path.isdir(killed_dir / "checkpoint-20")
    assert not os.path.exists(killed_dir / "checkpoint-30")  # really interrupted

    resumed = run_script(
        base_args(
            prior_and_images, killed_dir, steps, "--checkpointing_steps", "10", "--resume_from_checkpoint", "latest"
        )
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = encoder_weights(tmp_path / "a" / "encoder"), encoder_weights(killed_dir / "encoder")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert not any(name.endswith(".tmp") for name in os.listdir(killed_dir))


def test_two_processes(prior_and_images, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(29500 + os.getpid() % 1000), SCRIPT,
        *base_args(prior_and_images, out, 4, "--checkpointing_steps", "2", "--use_ema"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 8" in result.stderr  # 2 processes x 4
    assert os.path.isdir(out / "checkpoint-4")
    ScoreVAEPipeline.from_pretrained(out)


@pytest.mark.parametrize("teacher_kind", ["scorevae_encoder", "beta_vae", "scratch"])
def test_posterior_objective_then_score_objective(prior_and_images, tmp_path, teacher_kind):
    """The documented recipe: posterior matching against a frozen teacher, then score matching from its result."""
    teacher_dir = tmp_path / "teacher"
    config = dict(sample_size=8, in_channels=3, latent_dim=8, block_out_channels=(8, 16), norm_num_groups=4)
    torch.manual_seed(0)
    if teacher_kind == "beta_vae":
        from diffusers_scorevae import BetaVAE

        teacher = BetaVAE(**config)
        torch.nn.init.normal_(teacher.encoder.proj_out.weight, std=0.05)
        teacher_encoder = teacher.encoder
    else:
        teacher = ScoreVAEEncoder(down_block_types=("DownBlock2D",) * 2, **config)
        torch.nn.init.normal_(teacher.proj_out.weight, std=0.05)
        teacher_encoder = teacher
    teacher.save_pretrained(teacher_dir)

    posterior_dir = tmp_path / "posterior"
    # `scratch`: the student is a new encoder (zero head) instead of a copy of the teacher
    init = ["--init_encoder", "scratch", "--encoder_block_out_channels", "4,8"] if teacher_kind == "scratch" else []
    result = run_script(
        base_args(prior_and_images, posterior_dir, 4, "--objective", "posterior", "--teacher", str(teacher_dir))
        + ["--logging_steps", "2", "--checkpointing_steps", "2", "--use_ema", *init]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in open(posterior_dir / "train_log.jsonl")]
    assert {"step", "loss", "nll", "teacher_kl", "cpu_time"} <= set(logs[-1]) and logs[-1]["step"] == 4
    pipe = ScoreVAEPipeline.from_pretrained(posterior_dir)
    trained = pipe.encoder.state_dict()
    # the student starts as a copy of the teacher's encoder and moves; the teacher's folder is untouched
    start = teacher_encoder.state_dict()
    if teacher_kind == "scratch":
        assert pipe.encoder.config.block_out_channels == [4, 8] and trained["conv_in.weight"].shape[0] == 4
    else:
        assert set(trained) == set(start) and any(not torch.equal(trained[k], start[k]) for k in trained)
    reloaded = type(teacher).from_pretrained(teacher_dir).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in teacher.state_dict().items())
    assert pipe.encoder.config.prior["name_or_path"] == os.path.abspath(prior_and_images / "prior")

    score_dir = tmp_path / "score"
    init = str(posterior_dir / "encoder")
    result = run_script(base_args(prior_and_images, score_dir, 2, "--init_encoder", init, "--logging_steps", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in open(score_dir / "train_log.jsonl")]
    assert {"score_loss", "prior_loss", "kl"} <= set(logs[-1])
    ScoreVAEPipeline.from_pretrained(score_dir)


def test_resume_refuses_another_teacher_or_objective(prior_and_images, tmp_path):
    """A resumed posterior run must fit the same teacher weights: a teacher path that now holds other weights (e.g. a
    bundled β-VAE retuned between two sessions) or another objective is a ValueError, not a silent switch."""
    from diffusers_scorevae import BetaVAE

    config = dict(sample_size=8, in_channels=3, latent_dim=8, block_out_channels=(8, 16), norm_num_groups=4)
    teacher_dir, out = tmp_path / "teacher", tmp_path / "run"
    torch.manual_seed(0)
    BetaVAE(**config).save_pretrained(teacher_dir)

    def run(steps, *extra, teacher=True):
        objective = ["--objective", "posterior", "--teacher", str(teacher_dir)] if teacher else []
        args = base_args(prior_and_images, out, steps, "--checkpointing_steps", "2", *objective, *extra)
        return run_script(args + ["--resume_from_checkpoint", "latest"])

    result = run(2)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(out / "checkpoint-2" / "training_run.json"))
    assert record["objective"] == "posterior" and record["teacher"] == str(teacher_dir)
    assert len(record["teacher_sha256"]) == 64
    result = run(4)  # the same teacher weights: resumes
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isdir(out / "checkpoint-4")

    torch.manual_seed(1)
    BetaVAE(**config).save_pretrained(teacher_dir)  # the same path now holds other weights
    result = run(6)
    assert result.returncode != 0 and "is not the teacher" in result.stderr and "--init_encoder" in result.stderr
    result = run(6, teacher=False)
    assert result.returncode != 0 and "--objective score differs" in result.stderr
    assert not os.path.exists(out / "checkpoint-6")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--resolution", "16"], "resolution"),
        (["--resume_from_checkpoint", "somewhere"], "resume_from_checkpoint"),
        (["--objective", "posterior"], "--teacher"),
        (["--teacher", "somewhere"], "--teacher"),
    ],
)
def test_clear_errors_before_training(prior_and_images, tmp_path, extra, match):
    result = run_script(base_args(prior_and_images, tmp_path / "err", 2, *extra))
    assert result.returncode != 0
    assert match in result.stderr


def test_resume_latest_refuses_a_checkpoint_damaged_after_it_was_written(prior_and_images, tmp_path):
    """`--resume_from_checkpoint latest` over a checkpoint whose file changed after it was written (truncated, or a
    byte flipped: it would still load, with other weights) is an error naming it and the checkpoint before it; it
    never starts from scratch. Without checksums (older runs) a file that does not load is the same error."""
    out = tmp_path / "run"

    def run(steps):
        args = base_args(prior_and_images, out, steps, "--checkpointing_steps", "2")
        return run_script(args + ["--resume_from_checkpoint", "latest"])

    result = run(4)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = json.load(open(out / "checkpoint-4" / "checksums.json"))
    assert "encoder/diffusion_pytorch_model.safetensors" in checksums and "training_run.json" in checksums
    weights = out / "checkpoint-4" / "encoder" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    result = run(6)
    assert result.returncode != 0
    assert f"The checkpoint {out / 'checkpoint-4'} is damaged" in result.stderr
    assert "encoder/diffusion_pytorch_model.safetensors" in result.stderr
    assert f"--resume_from_checkpoint {out / 'checkpoint-2'}" in result.stderr  # the one before it
    assert not os.path.exists(out / "checkpoint-6") and "Training:" not in result.stderr  # nothing trained

    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated, and no checksums to tell
    os.remove(out / "checkpoint-4" / "checksums.json")
    result = run(6)
    assert result.returncode != 0 and "loading it failed" in result.stderr, result.stderr[-3000:]
    assert str(out / "checkpoint-4") in result.stderr and not os.path.exists(out / "checkpoint-6")

    import shutil

    shutil.rmtree(out / "checkpoint-2")  # the only checkpoint, damaged: delete it
    result = run(6)
    assert result.returncode != 0 and f"delete {out / 'checkpoint-4'}" in result.stderr


@pytest.fixture(scope="module")
def flow_prior(prior_and_images):
    """A tiny flow-matching prior folder next to the images, as `train_prior.py --flow_matching` writes one."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, shift=2.0)
    DDPMPipeline(unet=make_unet(3), scheduler=scheduler).save_pretrained(prior_and_images / "flow-prior")
    return prior_and_images


def test_flow_prior_score_objective_validates_saves_and_resumes(flow_prior, tmp_path):
    extra = ["--checkpointing_steps", "2", "--logging_steps", "1", "--loss_weighting", "likelihood"]
    extra += ["--timestep_sampling", "importance"]  # one weight per level of the flow grid (99 here)
    extra += ["--lr_warmup_steps", "0"]  # full-size steps: the resumed steps move the weights measurably
    validation = ["--validation_steps", "4", "--validation_inference_steps", "2", "--num_validation_images", "2"]
    straight = run_script(base_args(flow_prior, tmp_path / "a", 4, *extra, *validation, prior="flow-prior"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert os.path.exists(tmp_path / "a" / "validation" / "step-0000004.png")
    logs = [json.loads(line) for line in open(tmp_path / "a" / "train_log.jsonl")]
    assert len(logs) == 4 and all(np.isfinite(log["score_loss"]) for log in logs)
    pipe = ScoreVAEPipeline.from_pretrained(tmp_path / "a")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 2.0
    assert pipe.encoder.config.prior["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    images = pipe(image=torch.rand(2, 3, 8, 8), num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()

    # two steps, then a resume to four: the same weights as the straight run
    first = run_script(base_args(flow_prior, tmp_path / "b", 2, *extra, prior="flow-prior"))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_script(
        base_args(flow_prior, tmp_path / "b", 4, *extra, "--resume_from_checkpoint", "latest", prior="flow-prior")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr and os.path.isdir(tmp_path / "b" / "checkpoint-4")
    a, b = encoder_weights(tmp_path / "a" / "encoder"), encoder_weights(tmp_path / "b" / "encoder")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    at_two = encoder_weights(tmp_path / "b" / "checkpoint-2" / "encoder")
    assert max((a[k] - at_two[k]).abs().max().item() for k in a) > 1e-4  # steps 3 and 4 did train


def test_flow_prior_posterior_objective(flow_prior, tmp_path):
    """The posterior objective reads only the flow grid; the UNet runs for the validation decode alone."""
    teacher_dir, out = tmp_path / "teacher", tmp_path / "posterior"
    torch.manual_seed(0)
    teacher = ScoreVAEEncoder(
        sample_size=8, in_channels=3, latent_dim=8, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
    )  # fmt: skip
    torch.nn.init.normal_(teacher.proj_out.weight, std=0.05)
    teacher.save_pretrained(teacher_dir)
    args = base_args(flow_prior, out, 4, "--objective", "posterior", "--teacher", str(teacher_dir), prior="flow-prior")
    args += ["--logging_steps", "2", "--validation_steps", "4", "--validation_inference_steps", "2"]
    result = run_script(args + ["--num_validation_images", "2", "--loss_weighting", "likelihood"])
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert logs[-1]["step"] == 4 and np.isfinite(logs[-1]["nll"])
    assert os.path.exists(out / "validation" / "step-0000004.png")
    pipe = ScoreVAEPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    trained, start = pipe.encoder.state_dict(), teacher.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the student moved from the teacher
    images = pipe(image=torch.rand(2, 3, 8, 8), num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
