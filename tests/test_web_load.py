"""``xai-recipes serve`` under load, on 127.0.0.1 only: 8 concurrent gradio_client clients × 25 requests against a
queue of stated concurrency. 0 errors; every answer is its own request's (its predicted label and probability are
those explain() gives for that image, and its overlay has that image's size, each request's image differing in
both); p50 / p95 latency and the server's RSS growth are printed. Every wait is bounded: the test stops by itself.
"""

import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_sample

from conftest import TRAINED, free_port, serve

pytest.importorskip("gradio", reason="gradio is missing: pip install -e '.[web]'")
gradio_client = pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")

MODEL = str(TRAINED / "resnet")
CLIENTS, REQUESTS, CONCURRENCY = 8, 25, 2
REQUEST_S, STARTUP_S, TOTAL_S = 60, 180, 420


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 images, each of its own width, with the label and probability explain() gives them."""
    from xai_recipes import explain

    folder = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(3)
    out = []
    for i in range(8):
        sample = make_sample(rng, 72, 64 + 6 * i, label=i % 4)
        path = folder / f"img{i}.png"
        Image.fromarray(sample.image).save(path)
        _, label, p = explain(MODEL, path).predictions[0]
        out.append((path, label, p, 64 + 6 * i))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(tmp / "g"),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}
    log = tmp / "serve.log"
    args = [MODEL, "--no-demo", "--host", "127.0.0.1", "--port", str(port), "--concurrency", str(CONCURRENCY)]
    with serve(args, env, log, STARTUP_S) as (url, proc):
        yield url, proc, log


def _ask(client, path: Path):
    job = client.submit(gradio_client.handle_file(str(path)), None, MODEL, "gradcam", [], 1, api_name="/explain_image")
    return job.result(timeout=REQUEST_S)


def _top(predictions) -> tuple[str, float]:
    best = max(predictions["confidences"], key=lambda c: c["confidence"])
    return best["label"], best["confidence"]


def test_concurrent_clients_each_get_their_own_answers_and_memory_stays_bounded(server, images, tmp_path):
    url, proc, log = server
    server_process = psutil.Process(proc.pid)
    warm = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "warm"))
    for path, *_ in images[:2]:  # the model loaded, the geometry measured: what follows is steady state
        _ask(warm, path)
    rss_before = server_process.memory_info().rss
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + TOTAL_S

    def client_loop(k: int) -> None:
        try:
            # each user its own download folder (gradio_client names downloads by content hash: shared, two
            # threads of one process could read each other's half-written file)
            client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / f"client{k}"))
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none kills the test
            with lock:
                errors.append(f"client {k}: {type(exc).__name__}: {exc}")
            return
        for r in range(REQUESTS):
            if time.monotonic() > deadline:
                with lock:
                    errors.append(f"client {k}: out of time at request {r}")
                return
            path, label, p, width = images[(k * 3 + r) % len(images)]
            t0 = time.perf_counter()
            try:
                status, overlays, predictions, *_ = _ask(client, path)
                took = time.perf_counter() - t0
                got, prob = _top(predictions)
                shown = Image.open(overlays[0]["image"])
                problem = None
                if "Explained with" not in status:
                    problem = f"status {status!r}"
                elif got != label or abs(prob - p) > 1e-4:
                    problem = f"answer {got} {prob:.5f} for an image of {label} {p:.5f}"
                elif shown.width != width:
                    problem = f"overlay {shown.width} px wide for an image {width} px wide"
            except Exception as exc:  # noqa: BLE001
                took, problem = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
            with lock:
                latencies.append(took)
                if problem:
                    errors.append(f"client {k} request {r} ({path.name}): {problem}")

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 5))
    wall = time.perf_counter() - start
    rss_after = server_process.memory_info().rss
    assert not any(t.is_alive() for t in threads), "clients still running after the deadline"
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    print(f"{len(latencies)} requests from {CLIENTS} clients in {wall:.1f} s (queue concurrency {CONCURRENCY}): "
          f"p50 {statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s; server RSS {rss_before / 2**20:.0f} → "
          f"{rss_after / 2**20:.0f} MiB (+{(rss_after - rss_before) / 2**20:.1f}); {len(errors)} errors")
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert errors == []
    assert len(latencies) == CLIENTS * REQUESTS
    assert (rss_after - rss_before) / 2**20 < 150  # bounded: no per-request leak of images, maps or downloads
