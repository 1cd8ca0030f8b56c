"""The app under load: several gradio_client clients at once on /reconstruct against the live app on 127.0.0.1.
Decodes are served one at a time, in the order they arrived; every request is answered; a waiting client sees its
place in the queue; the server's memory stays bounded. Loops are bounded in count, and in time only against a hang:
the bound is minutes, far above what the requests take on a CPU that other jobs share, so it never times the app."""

import math
import os
import threading
import time

import PIL.Image
import pytest
from conftest import launch_app

from diffusers_scorevae import app
from diffusers_scorevae.bundled import bundled_test_images

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

STEPS = 2  # every decode here: enough to exercise the loop, a fraction of a second on a loaded CPU
CLIENTS = 6
REQUESTS = 24
DEADLINE = 600  # seconds any one wait here may take before the test reports a hang


def _rss_bytes() -> int:
    """This process's resident memory (the server runs in it)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, models, log, image): the live app, whose decodes write (seed, start, end) to `log` as they run."""
    models = app.load_models("fashion-mnist", device="cpu")
    log, original = [], app.core.reconstruct

    def logged(*args, **kwargs):
        start = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            log.append((args[5] if len(args) > 5 else kwargs.get("seed"), start, time.monotonic()))

    image = tmp_path_factory.mktemp("load") / "bundled-0.png"
    PIL.Image.fromarray(bundled_test_images()[0][0]).save(image)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app.core, "reconstruct", logged)
        demo, url = launch_app(app.launch, models=models)
        try:
            yield url, models, log, str(image)
        finally:
            demo.close()


def _wait(condition, what: str, seconds: float = DEADLINE):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_clients_at_once_are_served_one_at_a_time_in_order_and_see_their_place_in_the_queue(server):
    url, models, log, image = server
    clients = [Client(url, verbose=False) for _ in range(CLIENTS)]
    log.clear()
    jobs, ranks = [], {}
    models.lock.acquire()  # hold the pipeline: the first decode waits on it, the others wait in Gradio's queue
    try:
        for i, client in enumerate(clients):
            job = client.submit(handle_file(image), num_inference_steps=STEPS, seed=i, api_name="/reconstruct")
            jobs.append(job)
            # submit the next only once this one has its place: the order of arrival is the order of submission
            wanted = Status.PROCESSING if i == 0 else Status.IN_QUEUE
            _wait(lambda job=job, wanted=wanted: job.status().code == wanted, f"request {i} to be {wanted}")
            ranks[i] = (job.status().rank, job.status().queue_size)
        # what a waiting client sees: its place (rank 0 is next) among the waiting requests
        assert [ranks[i][0] for i in range(1, CLIENTS)] == list(range(CLIENTS - 1)), ranks
        assert all(size is not None and size >= rank + 1 for rank, size in ranks.values() if rank is not None)
        assert all(not job.done() for job in jobs)
    finally:
        models.lock.release()
    results = [job.result(timeout=DEADLINE) for job in jobs]

    assert [seed for seed, _, _ in log] == list(range(CLIENTS))  # in the order they arrived
    for (_, _, end), (_, start, _) in zip(log, log[1:]):
        assert end <= start  # one at a time: each decode starts after the previous one ended
    for i, (original, decodes, beta, metrics, note) in enumerate(results):
        assert metrics["settings"]["seed"] == i and len(decodes) == 1 and os.path.isfile(decodes[0]["image"])
        assert all(math.isfinite(v) for v in metrics["scorevae"].values() if v is not None)
    assert models.lock.acquire(blocking=False)  # nothing is left holding the pipeline
    models.lock.release()


def test_24_requests_from_6_clients_are_all_answered_and_memory_stays_bounded(server):
    url, models, log, image = server
    clients = [Client(url, verbose=False) for _ in range(CLIENTS)]
    first = clients[0].predict(handle_file(image), num_inference_steps=STEPS, api_name="/reconstruct")
    assert first[4] == "Input: used as is."
    rss_after_first = _rss_bytes()
    log.clear()

    answers, errors = [], []
    lock = threading.Lock()
    end = time.monotonic() + DEADLINE

    def work(index: int, client: Client):
        for k in range(REQUESTS // CLIENTS):  # bounded in count, and in time
            if time.monotonic() > end:
                with lock:
                    errors.append((index, k, "deadline"))
                return
            seed = index * 100 + k
            try:
                result = client.predict(handle_file(image), num_inference_steps=STEPS, seed=seed,
                                        api_name="/reconstruct")  # fmt: skip
            except Exception as error:  # noqa: BLE001 (any failure is the test's finding)
                with lock:
                    errors.append((index, k, repr(error)))
                continue
            with lock:
                answers.append((seed, result))

    threads = [threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE + 10)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == [] and len(answers) == REQUESTS
    assert sorted(seed for seed, _ in answers) == sorted(i * 100 + k for i in range(CLIENTS) for k in range(4))
    for seed, (original, decodes, beta, metrics, note) in answers:
        assert metrics["settings"]["seed"] == seed and os.path.isfile(decodes[0]["image"])
        assert all(math.isfinite(v) for v in metrics["scorevae"].values() if v is not None)
    assert len(log) == REQUESTS
    ordered = sorted(log, key=lambda entry: entry[1])
    for (_, _, end_), (_, start, _) in zip(ordered, ordered[1:]):
        assert end_ <= start  # one decode at a time
    growth = _rss_bytes() - rss_after_first
    assert growth < 300 * 2**20, f"the server's RSS grew by {growth / 2**20:.0f} MB over {REQUESTS} requests"
