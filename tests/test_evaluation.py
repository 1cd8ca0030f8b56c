"""diffusers_scorevae.evaluation: the rate, K decodes of one code, the spread of those decodes, the Fréchet distance of
reconstructions; and examples/evaluate_scorevae.py end to end on the bundled models (tiny real components, CPU)."""

import inspect
import json
import os
import sys

import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler

from diffusers_scorevae import BetaVAE, ScoreVAEPipeline, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.evaluation import (
    decode_call_kwargs,
    decode_settings,
    gather_in_order,
    image_generators,
    image_seed,
    kl_rate,
    process_share,
    reconstruction_metrics,
    same_code_metrics,
    scorevae_decode_samples,
    scorevae_reconstruct,
)
from diffusers_scorevae.metrics import l2
from diffusers_scorevae.models.classifier import FashionMNISTClassifier
from diffusers_scorevae.noise import kl_to_standard_normal

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import evaluate_scorevae  # noqa: E402


def make_pipe() -> ScoreVAEPipeline:
    scheduler = DDPMScheduler(num_train_timesteps=100)
    return ScoreVAEPipeline(unet=make_unet(1), scheduler=scheduler, encoder=make_encoder(1))


def images(n=3, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_kl_rate_is_the_clean_level_kl():
    encoder, x = make_encoder(1), images(5)
    mean, logvar = encoder(x * 2 - 1, encoder.config.clean_log_snr, return_dict=False)
    rate = kl_rate(encoder, x)
    torch.testing.assert_close(rate, kl_to_standard_normal(mean, logvar).detach())
    torch.testing.assert_close(kl_rate(encoder, x, batch_size=2), rate)
    assert rate.shape == (5,) and (rate > 0).all()

    # the β-VAE's rate is the KL term of its own training loss
    torch.manual_seed(0)
    beta_vae = BetaVAE(sample_size=8, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4).eval()
    torch.nn.init.normal_(beta_vae.encoder.proj_out.weight, std=0.05)
    _, _, kl = beta_vae.loss(x * 2 - 1)
    torch.testing.assert_close(kl_rate(beta_vae.encoder, x).mean(), kl.detach())


def test_decode_samples_reproducible_and_different():
    pipe, x = make_pipe(), images(3)
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "guidance_scale": 2.0, "seed": 5, "progress": False}
    decodes = scorevae_decode_samples(pipe, x, num_samples_per_code=3, **kwargs)
    assert decodes.shape == (3, 3, 1, 8, 8)
    torch.testing.assert_close(scorevae_decode_samples(pipe, x, num_samples_per_code=3, **kwargs), decodes)
    # the first decode is the K = 1 reconstruction, which is the pipeline's own reconstruction with one generator per
    # image, seeded from (seed, the image's index)
    torch.testing.assert_close(scorevae_reconstruct(pipe, x, **kwargs), decodes[0])
    generators = image_generators(5, [0, 1])
    direct = pipe(image=x[:2], num_inference_steps=3, guidance_scale=2.0, generator=generators, output_type="pt")
    torch.testing.assert_close(direct.images, decodes[0, :2])
    # an image's decodes do not depend on the batch it is in: another batch size, or a slice with its indices
    torch.testing.assert_close(scorevae_decode_samples(pipe, x, num_samples_per_code=3, **{**kwargs, "batch_size": 3}),
                               decodes)  # fmt: skip
    torch.testing.assert_close(
        scorevae_decode_samples(pipe, x[1:], num_samples_per_code=3, indices=[1, 2], **kwargs), decodes[:, 1:]
    )
    # later decodes of the same code use different noise
    assert (l2(decodes[0], decodes[1]) > 1e-3).all() and (l2(decodes[1], decodes[2]) > 1e-3).all()
    with pytest.raises(ValueError, match="num_samples_per_code"):
        scorevae_decode_samples(pipe, x, num_samples_per_code=0, **kwargs)


def test_decode_samples_guidance_log_snr_range_and_progress(capsys):
    pipe, x = make_pipe(), images(3)
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "guidance_scale": 2.0, "seed": 5}
    log_snr_range = (1.0, 5.0)  # the middle one of the three steps (λ = 0.56, 2.09, 9.21)
    decodes = scorevae_decode_samples(pipe, x, progress=False, guidance_log_snr_range=log_snr_range, **kwargs)
    assert capsys.readouterr().err == ""  # progress=False: silent, the pipeline's own bar included
    torch.testing.assert_close(
        scorevae_reconstruct(pipe, x, progress=False, guidance_log_snr_range=log_snr_range, **kwargs), decodes[0]
    )
    direct = pipe(
        image=x[:2], num_inference_steps=3, guidance_scale=2.0, guidance_log_snr_range=log_snr_range,
        generator=image_generators(5, [0, 1]), output_type="pt",
    )  # fmt: skip
    torch.testing.assert_close(direct.images, decodes[0, :2])
    assert (decodes[0] - scorevae_reconstruct(pipe, x, progress=False, **kwargs)).abs().max() > 1e-4

    # progress=True: a bar over the batches and one over each decode's denoising steps
    scorevae_decode_samples(pipe, x, num_samples_per_code=2, **kwargs)
    err = capsys.readouterr().err
    assert "ScoreVAE reconstruction" in err and "denoising (decode 2/2)" in err and "/3 [" in err


def test_same_code_metrics_closed_form():
    a = images(4, 6) * 0.5
    d = images(4, 6, seed=1) * 0.2
    norm = d.flatten(1).norm(dim=1).mean().item()
    # two decodes a ± d: their mean is exact; they are 2 ‖d‖ apart
    result = same_code_metrics(a, torch.stack([a + d, a - d]))
    assert result["l2_mean_of_k"] == pytest.approx(0, abs=1e-6)
    assert result["l2_between_decodes"] == pytest.approx(2 * norm, rel=1e-5)
    # a, a, a + d: mean a + d / 3; pairs 0, ‖d‖, ‖d‖
    result = same_code_metrics(a, torch.stack([a, a, a + d]))
    assert result["l2_mean_of_k"] == pytest.approx(norm / 3, rel=1e-5)
    assert result["l2_between_decodes"] == pytest.approx(2 * norm / 3, rel=1e-5)
    with pytest.raises(ValueError, match="decodes"):
        same_code_metrics(a, a[None])  # K = 1: no pair


def test_reconstruction_fd_is_zero_for_identity_and_grows_with_a_shift():
    torch.manual_seed(0)
    classifier = FashionMNISTClassifier(block_out_channels=(4, 8), feature_dim=8).eval()
    originals = images(64, 28)
    assert "fd" not in reconstruction_metrics(originals, originals, classifier)
    fds = [reconstruction_metrics(originals, originals * (1 - s), classifier, fd=True)["fd"] for s in (0, 0.1, 0.3)]
    assert abs(fds[0]) < 1e-6 < fds[1] < fds[2]
    with pytest.raises(ValueError, match="classifier"):
        reconstruction_metrics(originals, originals, fd=True)


def test_evaluate_scorevae_script(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_scorevae, "load_fashion_mnist", lambda split, data_dir=None: bundled_test_images())
    output = tmp_path / "results.json"
    pipeline = pretrained_path("fashion-mnist")
    args = evaluate_scorevae.parse_args(
        ["--pipelines", pipeline, "--beta_vae", pretrained_path("fashion-mnist-beta-vae"),
         "--classifier", pretrained_path("fashion-mnist-classifier"), "--num_images", "3",
         "--settings", "ddim:2:1", "heun:2:1:noclip", "ddim:2:1:eta=1.0,clip_sample=False", "ddpm:3:1:noclip,power=2",
         "saved:2",
         "--num_samples_per_code", "2", "--realism", "1", "--output", str(output), "--device", "cpu",
         "--guidance_log_snr_range", "-100", "inf"]
    )  # fmt: skip
    evaluate_scorevae.main(args)
    results = json.load(open(output))
    assert results["num_samples_per_code"] == 2
    assert results["guidance_log_snr_range"] == [-100, float("inf")]
    entry = results["scorevae"][pipeline]["ddim:2:1"]
    assert {"l2", "kl", "fd", "class_kept", "l2_mean_of_k", "l2_between_decodes", "seconds"} <= set(entry)
    assert entry["kl"] > 0 and entry["l2_between_decodes"] > 0
    assert {"l2", "kl", "fd", "class_kept"} <= set(results["beta_vae"]) and results["beta_vae"]["kl"] > 0
    # model evaluations per image: one per step, two per Heun step but the last
    runs = results["scorevae"][pipeline]
    assert [runs[s]["model_evals"] for s in ("ddim:2:1", "heun:2:1:noclip")] == [2, 3]
    assert runs["ddim:2:1:eta=1.0,clip_sample=False"]["clip_sample"] is False
    assert runs["ddim:2:1:eta=1.0,clip_sample=False"]["l2"] != entry["l2"]  # η = 1 is another sampler
    assert runs["ddpm:3:1:noclip,power=2"]["model_evals"] == 3  # custom timesteps 444, 111, 0
    # `saved`: the pipeline's own scheduler and, where the setting leaves them out, the settings saved with the model
    saved = ScoreVAEPipeline.from_pretrained(pipeline).decode_defaults
    assert runs["saved:2"]["guidance_scale"] == saved["guidance_scale"] and runs["saved:2"]["model_evals"] == 2
    assert runs["saved:2"]["guidance_log_snr_range"] == [-100, float("inf")]  # the run's flag
    # a later slice of the test set: its own images, the noise seeds a run from image 0 would give them
    count = len(bundled_test_images()[0])
    with pytest.raises(ValueError, match="--first_image"):
        evaluate_scorevae.main(
            evaluate_scorevae.parse_args(
                ["--pipelines", pipeline, "--output", str(output), "--first_image", str(count)]
            )
        )


def test_evaluate_scorevae_settings():
    parse = evaluate_scorevae.parse_setting
    assert parse("ddpm:50:2") == ("ddpm", 50, 2.0, {}, {})
    # steps and guidance scale left out or empty: the values saved with the model
    assert parse("ddpm") == ("ddpm", None, None, {}, {})
    assert parse("saved") == ("saved", None, None, {}, {})  # the pipeline's own scheduler
    assert evaluate_scorevae.parse_args(["--pipelines", "p", "--output", "x.json"]).settings == ["saved"]
    assert parse("ddim::2:realism=0.5") == ("ddim", None, 2.0, {}, {"realism": 0.5})
    assert parse("ddim:25:1.5:noclip,eta=0.5") == ("ddim", 25, 1.5, {"clip_sample": False}, {"eta": 0.5})
    assert parse("dpm:20:2:algorithm_type=sde-dpmsolver++,solver_order=2") == (
        "dpm",
        20,
        2.0,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        {},
    )
    assert parse("ddpm:4:2:noclip,power=2") == ("ddpm", 4, 2.0, {"clip_sample": False}, {"power": 2})
    # power 1 is diffusers' "leading" grid; power 2 moves steps to low noise; repeats at the low end merge
    assert evaluate_scorevae.power_timesteps(1000, 4, 1) == [750, 500, 250, 0]
    assert evaluate_scorevae.power_timesteps(1000, 4, 2) == [562, 250, 62, 0]
    assert evaluate_scorevae.power_timesteps(20, 10, 3) == [14, 10, 6, 4, 2, 1, 0]
    with pytest.raises(ValueError, match="power"):
        evaluate_scorevae.power_timesteps(1000, 4, 0)
    bad_settings = [("ddpm:x:2", "setting"), ("ddpm:1:2:3:4", "setting"), ("foo:50:2", "scheduler")]
    for bad, name in bad_settings + [("ddpm:50:2:fast", "option")]:
        with pytest.raises(ValueError, match=name):
            parse(bad)
    with pytest.raises(ValueError, match="--num_samples_per_code"):
        evaluate_scorevae.parse_args(["--pipelines", "p", "--output", "x.json", "--num_samples_per_code", "0"])


def test_image_seeds_depend_on_seed_and_index_only():
    assert image_seed(0, 7) == image_seed(0, 7)
    assert len({image_seed(seed, index) for seed in range(3) for index in range(50)}) == 150  # no collisions
    assert image_seed(0, 1) != image_seed(1, 0)  # not seed + index
    a, b = image_generators(3, [4, 4])
    torch.testing.assert_close(torch.randn(5, generator=a), torch.randn(5, generator=b))


class FakeState:
    """What `process_share` / `gather_in_order` read of accelerate's `PartialState`, for one process of several."""

    def __init__(self, index, num_processes):
        self.process_index, self.num_processes = index, num_processes
        self.is_main_process = index == 0

    def split_between_processes(self, items):
        from contextlib import nullcontext

        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        return nullcontext(items[start : start + per + (self.process_index < extra)])


@pytest.mark.parametrize("num_items, num_processes", [(7, 3), (2, 3), (6, 2), (5, 1)])
def test_process_shares_cover_each_item_once(num_items, num_processes):
    shares = [process_share(num_items, FakeState(i, num_processes)) for i in range(num_processes)]
    assert [i for share in shares for i in share] == list(range(num_items))  # in order, no item twice, none left out


def test_gather_in_order_single_process_and_order(monkeypatch):
    part = torch.arange(6.0).reshape(2, 3)
    assert gather_in_order(part, 0) is part and gather_in_order(part, 0, FakeState(0, 1)) is part
    import accelerate.utils

    # two processes' parts arrive in any order: the main process joins them by where they start
    parts = [(3, torch.tensor([[3.0], [4.0]])), (0, torch.tensor([[0.0], [1.0], [2.0]]))]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objects: parts)
    torch.testing.assert_close(gather_in_order(parts[1][1], 0, FakeState(0, 2)), torch.arange(5.0)[:, None])
    assert gather_in_order(parts[0][1], 3, FakeState(1, 2)) is None


def test_decode_settings_record_the_values_used():
    pipe = make_pipe()
    assert decode_call_kwargs(pipe, num_inference_steps=3, guidance_scale=None, guidance_log_snr_range=[1, 2]) == {
        "num_inference_steps": 3,
        "guidance_log_snr_range": (1, 2),
    }
    assert decode_call_kwargs(pipe, no_such_setting=None) == {}  # unset: left to the pipeline
    if "realism" not in inspect.signature(ScoreVAEPipeline.__call__).parameters:
        with pytest.raises(ValueError, match="realism"):
            decode_call_kwargs(pipe, realism=0.5)
    assert pipe.scheduler.config.clip_sample is True  # DDPMScheduler's default, which a guided decode ignores
    used = decode_settings(pipe, num_inference_steps=7, guidance_scale=2.0, clip_sample=None)
    assert used == {"num_inference_steps": 7, "guidance_scale": 2.0, "clip_sample": False}
    assert decode_settings(pipe, guidance_scale=0.0, clip_sample=None)["clip_sample"] is True  # the prior alone
    assert decode_settings(pipe, guidance_scale=2.0, clip_sample=True)["clip_sample"] is True
    if hasattr(ScoreVAEPipeline, "decode_defaults"):
        assert decode_settings(pipe, realism=None, guidance_scale=None) == {
            "realism": pipe.decode_defaults["realism"], "guidance_scale": pipe.decode_defaults["guidance_scale"]
        }  # fmt: skip
    saved = {"num_inference_steps": 50, "guidance_scale": 3.5, "guidance_log_snr_range": (-6.0, float("inf"))}

    class SavedDefaults(type(pipe)):  # a pipeline whose decoding settings travel with the model
        decode_defaults = saved

    pipe.__class__ = SavedDefaults
    used = decode_settings(pipe, num_inference_steps=None, guidance_scale=2.0, guidance_log_snr_range=None)
    assert used == {"num_inference_steps": 50, "guidance_scale": 2.0, "guidance_log_snr_range": [-6.0, float("inf")]}


def test_compare_takes_keyword_settings_and_models():
    from diffusers_scorevae.evaluation import compare

    scheduler = DDPMScheduler(num_train_timesteps=100)
    pipe = ScoreVAEPipeline(unet=make_unet(1, 16), scheduler=scheduler, encoder=make_encoder(1, 16))
    x = images(4, 16)  # SSIM's window is 11 pixels wide
    torch.manual_seed(0)
    classifier = FashionMNISTClassifier(sample_size=16, block_out_channels=(4, 8), feature_dim=4).eval()
    scorevae, baseline, metrics = compare(
        pipe, x, beta_vae=None, classifier=classifier, batch_size=3, num_inference_steps=2, guidance_scale=2.0,
        seed=1, fd=True, progress=False, prior="tiny",
    )  # fmt: skip
    assert baseline is None and "beta_vae" not in metrics and scorevae.shape == x.shape
    assert metrics["num_inference_steps"] == 2 and metrics["guidance_scale"] == 2.0 and metrics["num_processes"] == 1
    assert {"l2", "fd", "kl", "class_kept"} <= set(metrics["scorevae"]) and metrics["prior"] == "tiny"
    torch.testing.assert_close(scorevae, scorevae_reconstruct(pipe, x, 3, 2, 2.0, seed=1, progress=False))
