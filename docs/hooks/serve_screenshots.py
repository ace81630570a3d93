"""The screenshots of docs/serve.md, taken from the real app so they show what it draws.

``python docs/hooks/serve_screenshots.py DATA_DIR [--model NAME ...]`` starts ``aether serve``
on the sample city in DATA_DIR (after ``aether demo``, or the test suite's ``sample_runs``),
opens it in Debian's chromium with a few labelled places and writes ``docs/img/serve.png``
(1280 × 800) and ``docs/img/serve-phone.png`` (390 × 844).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

IMG = Path(__file__).resolve().parents[1] / "img"
#: Two places like the ones wanted and one unlike them (lon, lat), in central Helsinki.
POSITIVES = ["24.945000,60.170000", "24.940000,60.167000"]
NEGATIVES = ["24.948000,60.176000"]
QUERY = "coffee+shop"


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("data_dir", type=Path)
    args.add_argument("--model", action="append", default=[], help="a run to show (repeat)")
    opts = args.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt install chromium)")
    cmd = [sys.executable, "-m", "aether", "serve", "--city", "Helsinki", "--port", "0",
           "--data-dir", str(opts.data_dir), *[a for m in opts.model for a in ("--model", m)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"(http://127\.0\.0\.1:\d+/)", line)
        if not m:
            sys.exit(f"aether serve did not start: {line!r}")
        labels = "&".join([f"at={a}" for a in POSITIVES] + [f"not={n}" for n in NEGATIVES])
        url = f"{m.group(1)}?q={QUERY}&{labels}&k=5&view=60.1712,24.9440,14"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for name, size in (("serve.png", (1280, 800)), ("serve-phone.png", (390, 844))):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                page.goto(url)
                page.wait_for_selector('#status[data-state="done"]', timeout=120_000)
                page.wait_for_timeout(500)  # the heat images decode
                page.screenshot(path=str(IMG / name))
                print(IMG / name)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
