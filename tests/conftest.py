import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # synthetic.py, tiny.py

from tiny import tiny_config  # noqa: E402

TRAINED = TESTS / "trained"


def calibrate_batchnorm(model: torch.nn.Module, size: tuple[int, int] = (64, 64)) -> torch.nn.Module:
    """Random-init models: transformers starts some BN gammas near 0, so activations vanish and
    every CAM is zero. Reset BN affines to 1/0 and set running stats with a few train passes."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        torch.nn.init.ones_(bn.weight)
        torch.nn.init.zeros_(bn.bias)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    if bns:
        model.train()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(3):
                model(pixel_values=torch.randn(4, 3, *size, generator=g))
    return model.eval()


def tiny_model(family: str) -> torch.nn.Module:
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    return calibrate_batchnorm(AutoModelForImageClassification.from_config(tiny_config(family)))


@pytest.fixture(scope="session")
def trained_dir():
    return TRAINED


def assert_head_reproduces_logits(model: torch.nn.Module, size: tuple[int, int]) -> None:
    """The recipe's head (for DFF): the feature layer's output, pooled as the recipe says (mean
    over positions, or the CLS token), through the head gives the model's logits."""
    import xai_recipes
    from xai_recipes import LogitsModel, forward_with_capture

    recipe = xai_recipes.find_recipe(model)
    cap = forward_with_capture(LogitsModel(model, recipe), [recipe.features(model)], torch.randn(1, 3, *size))
    out = cap.activations[0].detach()
    if recipe.pooling == "cls":
        pooled = out[:, 0]
    else:
        pooled = (recipe.reshape(out, model, size) if recipe.reshape else out).mean(dim=(2, 3))
    with torch.no_grad():
        torch.testing.assert_close(recipe.head(model)(pooled), cap.logits.detach(), atol=1e-4, rtol=1e-4)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: list[str], env: dict, log: Path, startup_s: float, path: str = "", poll: float = 0.5,
          cwd: Path | None = None):
    """A context manager: ``python -m xai_recipes.cli serve ARGS`` (on 127.0.0.1, ``--port`` in ``args``) started
    with ``env``, its output in ``log``; entered once ``http://127.0.0.1:PORT/<path>`` answers (the test fails
    with the log if the server exits or does not answer within ``startup_s``), yielding ``(url, process)``;
    the server is stopped on exit."""
    import contextlib
    import subprocess
    import time
    import urllib.request

    @contextlib.contextmanager
    def served():
        port = args[args.index("--port") + 1]
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "xai_recipes.cli", "serve", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=cwd)
        url = f"http://127.0.0.1:{port}/"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + startup_s
        try:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"xai-recipes serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    opener.open(url + path, timeout=5).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"xai-recipes serve did not answer within {startup_s} s:\n{log.read_text()[-3000:]}")
                    time.sleep(poll)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    return served()
