"""The atheris fuzz target (fuzz/fuzz_explain.py), run for a bounded time: inputs tried, untyped failures.

``XAI_RECIPES_FUZZ_SECONDS`` sets the time (default 30 s); the figures are printed whatever the
outcome, and the README's Reliability section quotes them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("XAI_RECIPES_FUZZ_SECONDS", "30"))


def test_fuzzing_the_decode_and_explain_path_finds_no_untyped_failure(tmp_path, capsys):
    pytest.importorskip("atheris")  # the dev extra installs it; it has wheels for Linux and macOS only
    command = [sys.executable, str(ROOT / "fuzz" / "fuzz_explain.py"), str(tmp_path / "corpus"),
               f"-max_total_time={SECONDS}", "-timeout=20", "-rss_limit_mb=4096", "-print_final_stats=1"]
    env = {**os.environ, "FUZZ_CRASH_DIR": str(tmp_path / "crashes")}
    run = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 240, env=env, cwd=ROOT)
    log = run.stdout + run.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    untyped = [line for line in log.splitlines() if line.startswith("UNTYPED ")]
    coverage = re.findall(r"cov: (\d+)", log)
    with capsys.disabled():
        print(f"\nfuzz_explain: {done.group(1) if done else '?'} inputs tried in {done.group(2) if done else '?'} s, "
              f"{len(untyped)} untyped failures, {coverage[-1] if coverage else '?'} coverage points")
        for line in untyped[:20]:
            print("  " + line)
    assert run.returncode == 0 and done, f"the fuzzer stopped (exit {run.returncode}): a crash, hang or bomb\n{log[-3000:]}"
    assert int(done.group(1)) >= 50, "too few inputs tried to mean anything (beyond the 22 seeds)"
    assert untyped == [], f"{len(untyped)} inputs gave an untyped error or an invalid map (saved under {tmp_path / 'crashes'})"
