"""The app's API endpoints (/reconstruct, /interpolate, /sample, /swap_prior) driven with gradio_client against the
live app on 127.0.0.1, and bad image files through the functions and through /reconstruct: each gets a readable
message or is converted with a note, and the server goes on serving."""

import io
import math
import os
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
from conftest import launch_app

from diffusers_scorevae import app
from diffusers_scorevae.bundled import bundled_test_images

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

STEPS = 2  # every decode here: enough to exercise the loop, seconds on a loaded CPU
SIDE = 28 * app.DISPLAY_SCALE  # a 28×28 image as the API answers it


@pytest.fixture(scope="module")
def models():
    models = app.load_models("fashion-mnist", device="cpu")
    # the bundle decodes at realism 0.1 (6 of 50 steps); at the 2 steps used here that is no step at all, so these
    # tests of the app's mechanics save realism 1 on their copy: every step runs (test_realism_* check the knob)
    models.pipe.encoder.register_to_config(realism=1.0)
    return models


@pytest.fixture(scope="module")
def client(models):
    demo, url = launch_app(app.launch, models=models)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two bundled test images as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(2):
        path = folder / f"bundled-{i}.png"
        PIL.Image.fromarray(bundled_test_images()[0][i]).save(path)
        paths.append(str(path))
    return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(path, side: int = 20_000):
    """A 1-bit side×side black PNG written row by row with zlib: ~50 KB on disk, 400 megapixels decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """name -> (path, "error" or "note", text the message must contain)."""
    folder = tmp_path_factory.mktemp("bad")
    files = {}

    (folder / "empty.png").write_bytes(b"")
    files["empty"] = (folder / "empty.png", "error", "the file is empty (0 bytes)")

    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    files["truncated"] = (folder / "truncated.png", "error", "the PNG file is truncated")

    (folder / "random.png").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["random bytes"] = (folder / "random.png", "error", "its contents are not an image")

    _bomb_png(folder / "bomb.png")
    files["decompression bomb"] = (folder / "bomb.png", "error", "refused from its header, before decoding")

    PIL.Image.fromarray(np.full((28, 28), 40_000, dtype=np.uint16)).save(folder / "sixteen.png")
    files["16-bit PNG"] = (folder / "sixteen.png", "note", "scaled from 16 bits to 8 bits")

    PIL.Image.new("CMYK", (28, 28), (0, 0, 0, 200)).save(folder / "cmyk.jpg")
    files["CMYK JPEG"] = (folder / "cmyk.jpg", "note", "converted from CMYK to grayscale")

    frames = [PIL.Image.new("L", (28, 28), value) for value in (255, 0, 0)]  # white, then black
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated GIF"] = (folder / "animated.gif", "note", "animated GIF: used its first frame")

    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3], rgba[8:20, 8:20, 3] = 255, 255  # a white square; the rest white but transparent
    PIL.Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    files["alpha channel"] = (folder / "alpha.png", "note", "alpha channel flattened: transparent pixels put on black")
    return {name: (str(path), kind, text) for name, (path, kind, text) in files.items()}


def _picture(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32)


def _finite_numbers(row: dict) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in row.values() if v is not None)


# ---------------------------------------------------------------------------------------------------------------------
# the four endpoints


def test_the_api_has_the_four_named_endpoints_and_nothing_else(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert sorted(api["named_endpoints"]) == ["/interpolate", "/reconstruct", "/sample", "/swap_prior"]
    assert not api["unnamed_endpoints"]
    parameters = {
        name: [(p["parameter_name"], p["parameter_has_default"], p["parameter_default"]) for p in info["parameters"]]
        for name, info in api["named_endpoints"].items()
    }
    assert parameters["/reconstruct"] == [
        ("image", False, None), ("num_inference_steps", True, None), ("guidance_scale", True, None),
        ("num_decodes", True, 1), ("seed", True, 0), ("realism", True, None), ("pipeline", True, "fashion-mnist"),
    ]  # fmt: skip
    assert [p[0] for p in parameters["/interpolate"]][:2] == ["image_a", "image_b"]
    assert "image" not in [p[0] for p in parameters["/sample"]]
    assert parameters["/swap_prior"][:2] == [("image", True, None), ("prior", True, "fashion-mnist-prior-large")]


def test_reconstruct_endpoint_answers_images_and_metrics_in_one_call(client, images, models):
    original, decodes, beta, metrics, note = client.predict(
        handle_file(images[0]), num_inference_steps=STEPS, num_decodes=2, seed=3, api_name="/reconstruct"
    )
    assert _picture(original).shape == (SIDE, SIDE) and _picture(beta).shape == (SIDE, SIDE)
    assert len(decodes) == 2 and all(_picture(d["image"]).shape == (SIDE, SIDE) for d in decodes)
    assert _picture(decodes[0]["image"]).std() > 5  # a decode, not a blank picture
    assert metrics["settings"]["num_inference_steps"] == STEPS and metrics["settings"]["seed"] == 3
    assert metrics["settings"]["guidance_scale"] == app.decode_defaults(models.pipe)["guidance_scale"]
    for row in ("scorevae", "beta_vae"):
        assert {"kl", "l2", "psnr", "ssim", "sharpness"} <= set(metrics[row]) and _finite_numbers(metrics[row])
    assert metrics["original"]["class"] == "Ankle boot" and note == "Input: used as is."
    # stateless: the same call answers the same decodes
    again = client.predict(
        handle_file(images[0]), num_inference_steps=STEPS, num_decodes=2, seed=3, api_name="/reconstruct"
    )
    assert np.array_equal(_picture(again[1][0]["image"]), _picture(decodes[0]["image"]))


def test_interpolate_sample_and_swap_prior_endpoints(client, images):
    grid, note = client.predict(
        handle_file(images[0]), handle_file(images[1]), num_points=3, num_inference_steps=STEPS,
        api_name="/interpolate",
    )  # fmt: skip
    picture = _picture(grid)
    # two labelled rows of A | 3 points | B, each picture 28 px enlarged
    assert picture.shape[1] > 5 * 28 * app.DISPLAY_SCALE // 2 and picture.shape[0] > 2 * 28 * app.DISPLAY_SCALE // 2
    assert note == "A: used as is; B: used as is."

    samples, note = client.predict(num_images=3, num_inference_steps=STEPS, seed=1, api_name="/sample")
    assert len(samples) == 3 and all(_picture(s["image"]).shape == (SIDE, SIDE) for s in samples)
    assert note == "3 codes z ~ N(0, I) from seed 1."

    own, other, note = client.predict(handle_file(images[1]), num_inference_steps=STEPS, api_name="/swap_prior")
    assert len(own) == len(other) == 1 and "the code of the image" in note
    assert not np.array_equal(_picture(own[0]["image"]), _picture(other[0]["image"]))
    own, other, note = client.predict(num_codes=2, num_inference_steps=STEPS, api_name="/swap_prior")
    assert len(own) == len(other) == 2 and note == "2 codes z ~ N(0, I) from seed 0."


def test_bad_settings_and_missing_files_reach_the_client_as_messages(client, images):
    with pytest.raises(AppError, match="steps must be a whole number from 1 to 1000, got 0"):
        client.predict(handle_file(images[0]), num_inference_steps=0, api_name="/reconstruct")
    with pytest.raises(AppError, match=r"No image_b was sent"):
        client.predict(handle_file(images[0]), None, num_inference_steps=STEPS, api_name="/interpolate")
    with pytest.raises(AppError, match="prior 'nope' is not a bundled prior"):
        client.predict(prior="nope", num_inference_steps=STEPS, api_name="/swap_prior")
    with pytest.raises(AppError, match="pipeline 'nope' is not offered here"):
        client.predict(num_images=1, num_inference_steps=STEPS, pipeline="nope", api_name="/sample")


def test_realism_is_passed_only_when_set_and_a_pipeline_that_cannot_honour_it_says_why(client, images, models):
    class Old:  # a pipeline whose __call__ has no realism
        def __call__(self, latent_codes=None, num_inference_steps=None, guidance_scale=None):
            pass

    assert "realism" not in app.decode_kwargs(models.pipe, STEPS, None, None)
    with pytest.raises(ValueError, match="has no realism setting"):
        app.decode_kwargs(Old(), STEPS, realism=0.5)

    def call(realism):
        return client.predict(
            handle_file(images[0]), num_inference_steps=STEPS, realism=realism, api_name="/reconstruct"
        )

    try:
        image = PIL.Image.open(images[0])
        expected = app.reconstruct(models, image, STEPS, realism=0.5).metrics["settings"]["realism"]
    except ValueError as error:  # e.g. an encoder without the mean decoder that realism < 1 starts from
        with pytest.raises(AppError) as raised:
            call(0.5)
        assert str(error) in str(raised.value) and "realism" in str(error)
    else:
        assert call(0.5)[3]["settings"]["realism"] == expected == 0.5
    assert call(None)[3]["settings"]["num_inference_steps"] == STEPS  # the server goes on serving


# ---------------------------------------------------------------------------------------------------------------------
# bad files


def test_bad_files_through_the_functions(bad_files, models, monkeypatch):
    shape = models.pipe.image_shape
    for name, (path, kind, text) in bad_files.items():
        if kind == "error":
            with pytest.raises(ValueError) as raised:
                app.prepare_image(path, shape)
            message = str(raised.value)
            assert text in message and os.path.basename(path) in message, (name, message)
        else:
            picture, note = app.prepare_image(path, shape)
            assert picture.size == (28, 28) and picture.mode == "L" and text in note, (name, note)
    # an animation: its first frame (white), not a later one; alpha: transparent pixels black, opaque ones kept
    assert np.asarray(app.prepare_image(bad_files["animated GIF"][0], shape)[0]).min() == 255
    alpha = np.asarray(app.prepare_image(bad_files["alpha channel"][0], shape)[0])
    assert alpha[0, 0] == 0 and alpha[14, 14] == 255

    # the decompression bomb is refused from its header: no pixel is decoded (decoding one is an error here)
    def decoded(*args, **kwargs):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decoded)
    with pytest.raises(ValueError, match=r"too large to read \(400 megapixels\)"):
        app.prepare_image(bad_files["decompression bomb"][0], shape)
    # an image over the app's own limit (but under Pillow's) is refused from its header too
    monkeypatch.setattr(app.core, "MAX_INPUT_PIXELS", 27 * 27)
    with pytest.raises(ValueError, match=r"too large to read \(28×28, 0 megapixels\)"):
        app.prepare_image(bad_files["16-bit PNG"][0], shape)


def test_bad_files_through_the_reconstruct_endpoint(client, bad_files, images):
    for name, (path, kind, text) in bad_files.items():
        if kind == "error":
            with pytest.raises(AppError) as raised:
                client.predict(handle_file(path), num_inference_steps=STEPS, api_name="/reconstruct")
            message = str(raised.value)
            assert text in message and "Traceback" not in message and message.strip() != "Error", (name, message)
        else:
            original, decodes, beta, metrics, note = client.predict(
                handle_file(path), num_inference_steps=STEPS, api_name="/reconstruct"
            )
            assert text in note and _picture(original).shape == (SIDE, SIDE) and len(decodes) == 1, (name, note)
            assert _finite_numbers(metrics["scorevae"]), name
    # and the server goes on serving
    original, decodes, beta, metrics, note = client.predict(
        handle_file(images[0]), num_inference_steps=STEPS, api_name="/reconstruct"
    )
    assert note == "Input: used as is." and _finite_numbers(metrics["scorevae"])


def test_bad_files_through_the_pages_upload_box(bad_files, models):
    demo = app.build_demo(models=models)
    uploaded = next(fn.fn for fn in demo.fns.values() if fn.name == "uploaded")
    for name, (path, kind, text) in bad_files.items():
        source, preview, note = uploaded("fashion-mnist", path)
        assert text in note and os.path.basename(path) in note, (name, note)
        if kind == "error":
            assert source is None and preview is None and note.startswith("⚠️ "), name
        else:
            assert source == ("file", path) and _picture(preview).shape == (SIDE, SIDE), name
