"""Render an HTML report from results files and screenshot it in a real headless browser (Debian's Chromium).

    python benchmarks/report_screenshot.py demo/before.json demo/after.json demo/before_paraphrase.json \
        demo/after_paraphrase.json --out benchmarks/results/report_screenshot.png [--html report.html]
        [--width 1280] [--height 12000] [--colors 256]

(`concept-edit demo --out demo` writes those four results files; install the browser with
`apt-get install -y chromium`.) The page is written with `concept-edit report`'s own code, then drawn by

    chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
        --disable-sync --no-first-run --hide-scrollbars --user-data-dir=<tmp> --screenshot=<png>
        --window-size=1280,12000 file://<report.html>

The white space below the page's end is cut off and the PNG is reduced to a 256-colour palette, so that the
committed screenshot stays small. A page taller than the window would be cut without a sign: the script fails
(exit 1) when the content reaches the window's last rows; give a larger --height. Look at the PNG: it is
what a reader of a printed or shared report sees (no hover, no zoom).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 12000, browser: str | None = None,
               timeout: float = 180) -> Path:  # fmt: skip
    """Draw `html` with headless Chromium into `png` (written whole: Chromium writes into a temporary folder)."""
    browser = browser or find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        shot = Path(tmp) / "shot.png"
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # as root in a container Chromium refuses to start with its sandbox
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            Path(html).resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if not shot.is_file():
            raise RuntimeError(f"{browser} wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(shot), png)
    return png


def cut_off(png: Path, margin: int = 24) -> bool:
    """True when content reaches the window's last `margin` rows: the page went on below the screenshot."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    background = pixels[0, 0]  # the page's own background (its top-left corner is margin)
    return bool((pixels[-margin:] != background).any())


def trim_and_shrink(png: Path, colors: int = 256, margin: int = 24) -> Path:
    """Cut the blank rows below the page's content and store the PNG with a palette of `colors`."""
    image = Image.open(png).convert("RGB")
    pixels = np.asarray(image)
    rows = np.flatnonzero((pixels != pixels[-1:, :, :]).any(axis=(1, 2)))  # rows unlike the page's last row
    bottom = min(len(pixels), int(rows[-1]) + 1 + margin) if len(rows) else len(pixels)
    image = image.crop((0, 0, image.width, bottom))
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = png.with_name(png.name + ".tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(png)
    return png


def blank(png: Path) -> bool:
    """True when the screenshot shows (almost) nothing: fewer than 1% of its pixels differ from white."""
    pixels = np.asarray(Image.open(png).convert("L"))
    return float((pixels < 245).mean()) < 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results .json files, as `concept-edit report` takes them")
    parser.add_argument("--out", required=True, help="screenshot .png")
    parser.add_argument("--html", default=None, help="keep the rendered report here (default: a temporary file)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=12000)
    parser.add_argument("--colors", type=int, default=256, help="palette size of the saved PNG (0: full colour)")
    args = parser.parse_args(argv)

    from concept_edit.evaluation.report import write_report

    with tempfile.TemporaryDirectory(prefix="report-html-") as tmp:
        html = Path(args.html) if args.html else Path(tmp) / "report.html"
        write_report(args.results, html)
        png = screenshot(html, Path(args.out), width=args.width, height=args.height)
    if cut_off(png):
        print(f"the report is taller than --height {args.height}: the screenshot is cut; give a larger --height",
              file=sys.stderr)  # fmt: skip
        return 1
    trim_and_shrink(png, colors=args.colors)
    size = Image.open(png).size
    print(f"wrote {png} ({size[0]}x{size[1]} px, {png.stat().st_size / 1024:.0f} KB)")
    if blank(png):
        print("the screenshot is blank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
