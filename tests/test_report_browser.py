"""The evaluation report as a browser shows it: headless Chromium (Debian's ``chromium``, which .ci/run installs) loads
the page from the file alone. Skipped, with the reason, where no Chromium is installed."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import SimpleITK as sitk

from stunet.evaluation.evaluate import evaluate
from test_evaluation import add_quality, make_cohort, parse_page

# A browser that runs alone: no sandbox (CI runs as root), no GPU, no first-run pages, no background traffic, no
# updates, no sync; each start gets a fresh profile folder.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str:
    """The installed Chromium, or a skip that says how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")


def browse(browser: str, profile, *args) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


def test_the_report_renders_in_headless_chromium(tmp_path):
    """Its DOM has the tables and the image, and the screenshot shows the plots' colours (the cases' blue dots, the
    medians' red)."""
    browser = chromium()
    ref, pred = make_cohort(tmp_path)
    add_quality(pred)
    evaluate(ref, pred, tmp_path / "out", metrics=["dice", "hd95"], num_processes=1)
    page = (tmp_path / "out" / "report.html").as_uri()
    dom = browse(browser, tmp_path / "profile_dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = parse_page(dom.stdout)
    assert rendered.tags.count("table") >= 4 and len(rendered.images) == 1
    shot = tmp_path / "shot.png"
    run = browse(browser, tmp_path / "profile_shot", f"--screenshot={shot}", "--window-size=1000,2400",
                 "--hide-scrollbars", page)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))[..., :3].reshape(-1, 3).astype(int)
    bluish = (pixels[:, 2] - pixels[:, 0] > 60) & (pixels[:, 2] > 120)  # the dots, blended with the white
    reddish = (pixels[:, 0] - pixels[:, 2] > 80) & (pixels[:, 0] > 150)  # the medians
    assert bluish.sum() > 50 and reddish.sum() > 20, "no plots on the rendered page"
