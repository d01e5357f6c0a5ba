"""The evaluation report as a browser shows it: headless Chromium (Debian's ``chromium``, which .ci/run installs) loads
the page from the file alone, in a 1400-pixel window: nothing scrolls sideways, every image loads, no request leaves
the page, and the table of every case sorts on a click. Skipped, with the reason, where no Chromium is installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import SimpleITK as sitk

from stunet.evaluation.evaluate import evaluate
from test_evaluation import ALL, add_quality, make_cohort, parse_page

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
    assert rendered.tags.count("table") >= 4 and len(rendered.images) > 1  # the plot and the worst cases drawn
    shot = tmp_path / "shot.png"
    run = browse(browser, tmp_path / "profile_shot", f"--screenshot={shot}", "--window-size=1000,2400",
                 "--hide-scrollbars", page)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))[..., :3].reshape(-1, 3).astype(int)
    bluish = (pixels[:, 2] - pixels[:, 0] > 60) & (pixels[:, 2] > 120)  # the dots, blended with the white
    reddish = (pixels[:, 0] - pixels[:, 2] > 80) & (pixels[:, 0] > 150)  # the medians
    assert bluish.sum() > 50 and reddish.sum() > 20, "no plots on the rendered page"


# Run after the page has loaded (appended to a copy of it): what the browser measured, written into the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var th = document.querySelector("table.cases thead th:nth-child(3)");
  th.click(); th.click();  // dice, descending
  var first = document.querySelector("table.cases tbody tr td:nth-child(3)").textContent;
  var out = {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
             images: images.length, loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
             widest: Math.max.apply(null, images.map(function (i) { return i.getBoundingClientRect().right; })),
             requests: performance.getEntriesByType("resource").map(function (r) { return r.name; }),
             firstDice: first};
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_the_report_fits_a_1400_pixel_window_and_loads_everything_offline(tmp_path):
    """Ten metrics (the widest distribution figure), a volume plot and the pictures: at 1400 pixels the page does
    not scroll sideways and no image reaches past the window; every image has loaded; the browser fetched nothing
    (resources and a resolver that resolves no host); sorting the table of every case by Dice puts the best first."""
    browser = chromium()
    ref, pred = make_cohort(tmp_path, cases=4)
    add_quality(pred)
    rows = evaluate(ref, pred, tmp_path / "out", metrics=ALL, num_processes=1)
    text = (tmp_path / "out" / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    dom = browse(browser, tmp_path / "profile", "--window-size=1400,900", "--virtual-time-budget=5000",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["scrollWidth"] <= probe["innerWidth"] <= 1400, probe
    assert probe["widest"] <= probe["innerWidth"], probe
    assert probe["images"] >= 3 and probe["loaded"] == probe["images"], probe
    assert probe["requests"] == [], probe
    assert float(probe["firstDice"]) == pytest.approx(max(r["dice"] for r in rows), rel=1e-3), probe
