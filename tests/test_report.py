"""The evaluation report as a place to work through failures (issue 32, point 2): the inputs and the command line,
every case and label in a sortable table with units, pictures of the worst and the quality-flagged cases (over the
images with --images), a section per fold of a cross-validation, the volumes against each other, figures that fit a
1400-pixel window, and the quality numbers whether or not anything is flagged. How a browser shows it:
tests/test_report_browser.py."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import SimpleITK as sitk

from stunet.evaluation.evaluate import evaluate
from stunet.evaluation.thumbnails import MAX_THUMBNAILS, chosen
from test_evaluation import ALL, add_quality, assert_self_contained, cross_validation_folder, make_cohort, write


def png_size(uri: str) -> tuple[int, int]:
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_images(root, ref):
    """An image per case, brighter inside its reference's labels, named as nnU-Net's imagesTr."""
    for path in sorted(ref.glob("*.nii.gz")):
        labels = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(labels).astype(np.float32) * 100 + 20
        write(root / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"), array, (2.0, 0.8, 0.8))
    return root / "imagesTr"


def cases_table(text: str) -> list[list[str]]:
    table = re.search(r'<table class="cases sortable">(.*?)</table>', text, re.S).group(1)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]


def test_the_report_names_its_inputs_and_holds_every_case_with_units_pictures_and_volumes(tmp_path, capsys):
    from stunet.cli.evaluate import main
    ref, pred = make_cohort(tmp_path, cases=3)
    add_quality(pred)  # case0's spleen is flagged
    images = write_images(tmp_path, ref)
    main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out"), "--images", str(images), "-np", "1",
          "--quiet", "--metrics", *ALL])
    text = (tmp_path / "out" / "report.html").read_text()
    page = assert_self_contained(text)
    for folder in (ref, pred, images):
        assert str(folder.resolve()) in text
    assert "stunet-evaluate -ref" in text and "--images" in text
    table = cases_table(text)
    assert table[0][:5] == ["case", "label", "dice", "iou", "nsd"] and "hd95 (mm)" in table[0]
    assert "volume_ref_ml (ml)" in table[0] and table[0][-2:] == ["confidence", "QC flag"]
    assert len(table) - 1 == 3 * 2  # every case and label
    assert {"Every case", "Volumes", "Worst cases per label", "Quality flags"} <= set(page.headings)
    assert "data-v=" in text and "table.sortable" in text  # sortable: the keys and the script
    thumbs = re.findall(r'<img alt="([^"]+)" src="(data:image/png;base64,[^"]+)" width="220"', text)
    assert 1 <= len(thumbs) <= MAX_THUMBNAILS
    assert "case0 spleen" in {alt for alt, _ in thumbs}  # the flagged pair is drawn
    assert "case1 spleen" in {alt for alt, _ in thumbs}  # the worst (missed) one too
    for _, uri in thumbs:
        assert png_size(uri) == (220, 220) and len(uri) < 60_000
    plots = re.findall(r'<img class="plot" alt="([^"]+)" src="([^"]+)"', text)
    assert {alt for alt, _ in plots} == {"each metric per label", "reference against predicted volume"}
    assert all(png_size(uri)[0] <= 1400 for _, uri in plots)  # ten metrics: the figure wraps, not widens


def test_thumbnails_over_the_masks_alone_and_bounded(tmp_path):
    ref, pred = make_cohort(tmp_path, cases=2)
    evaluate(ref, pred, tmp_path / "out", metrics=["dice"], num_processes=1)
    text = (tmp_path / "out" / "report.html").read_text()
    assert re.search(r'<img alt="case1 spleen" src="data:image/png', text)
    rows = [{"case": f"c{k}", "name": f"l{n}", "dice": k / 100} for k in range(50) for n in range(10)]
    picked = chosen(rows, "dice", True, {("c49", "l0"), ("nowhere", "l0")}, 3)
    assert len(picked) == MAX_THUMBNAILS and picked[0] == ("c49", "l0") and ("nowhere", "l0") not in picked
    assert ("c0", "l0") in picked and ("c1", "l9") in picked  # each label's worst, by turns


def test_a_cross_validation_gets_a_section_per_fold(tmp_path):
    ref, pred = make_cohort(tmp_path, cases=4)
    trainer = cross_validation_folder(tmp_path, pred)
    (trainer / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    evaluate(ref, trainer, tmp_path / "out", metrics=["dice", "hd95"], num_processes=1)
    text = (tmp_path / "out" / "report.html").read_text()
    section = text[text.index('<h2 id="folds">'):text.index('<h2 id="distributions">')]
    assert "fold_0" in section and "fold_1" in section and "hd95 (mm)" in section
    table = cases_table(text)
    assert table[0][:3] == ["case", "fold", "label"] and table[1][:2] == ["case0", "fold_0"]
    one = tmp_path / "one"
    evaluate(ref, trainer / "fold_1" / "validation", one, metrics=["dice"], num_processes=1)
    assert "fold_1" in (one / "report.html").read_text()


def test_quality_numbers_are_shown_when_nothing_is_flagged_and_the_note_names_qc(tmp_path):
    ref, pred = make_cohort(tmp_path, cases=2)
    evaluate(ref, pred, tmp_path / "none", metrics=["dice"], num_processes=1)
    assert "stunet-predict --qc" in (tmp_path / "none" / "report.html").read_text()
    add_quality(pred, flagged_case=None)
    evaluate(ref, pred, tmp_path / "out", metrics=["dice"], num_processes=1)
    text = (tmp_path / "out" / "report.html").read_text()
    quality = text[text.index('<h2 id="quality">'):text.index('<h2 id="cases">')]
    assert "0 of 4 case-label pairs" in quality and "0.91" in quality and "confidence mean" in quality
    assert "0.91" in text[text.index('<h2 id="cases">'):]  # each case's confidence beside its metrics
