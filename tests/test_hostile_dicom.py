"""Hostile DICOM (issue 25): pixel data that does not match its header, rescales that leave int16, spacings that are
not spacings, slices that disagree and objects that are not slices, zip bombs, anonymised series and the DICOM-SEG.

Each class is one run of ``stunet-predict`` over a folder of series folders (or zips): a valid series and several
members of the class. Every bad case fails alone with exit status 1 and one error line naming its file and the tag,
writes nothing, and the valid series is still predicted; the Python API (``stunet.Segmenter``) raises CaseError with
the same message. Series are small: 8 slices of 24 x 24.
"""
import struct
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import set_text, write_object, write_series, zip_folder
from predict_helpers import predict
from stunet.cli.errors import one_line
from stunet.clinical import dicom
from stunet.clinical.dicom import DicomError, extract_zip, read_dicom
from stunet.errors import CaseError

SHAPE = (8, 24, 24)
PREFIX = "stunet-predict: error: "


@pytest.fixture(scope="module")
def segmenter(model_folder):
    import stunet
    return stunet.Segmenter.from_model_folder(model_folder, device="cpu", mirroring=False)


def volume(seed: int = 0) -> np.ndarray:
    """Stored values of a small CT-like series: air around a brighter block, with noise."""
    rng = np.random.default_rng(seed)
    stored = rng.normal(24, 20, SHAPE)  # about -1000 HU with intercept -1024
    stored[2:6, 6:18, 5:19] += 1100
    return stored.astype(np.int16)


def series(folder, edit=None, **kwargs):
    return write_series(folder, volume(), pixel_spacing=(1.2, 1.1), intercept=-1024, edit=edit, **kwargs)


def only(k_or_all, change):
    """An ``edit`` applying ``change(ds)`` to slice k only (or to every slice for None)."""
    def edit(k, ds):
        if k_or_all is None or k == k_or_all:
            change(ds)
    return edit


def run(model_folder, inputs, out, *options):
    done = predict("-i", inputs, "-o", out, "-m", model_folder, "--disable-tta", *options, check=False)
    errors = [line[len(PREFIX):] for line in done.stderr.splitlines() if line.startswith(PREFIX)]
    return done, errors


def assert_refused(done, errors, out, bad: dict, good=("good",), ending=".nii.gz"):
    """Exit 1; per bad case exactly one error line, containing each of its expected fragments (its file, the tag);
    nothing written for it; the good cases predicted."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors) == len(bad), done.stderr[-3000:]
    for name, fragments in bad.items():
        mine = [e for e in errors if all(f in e for f in fragments) and (f"/{name}/" in e or f"/{name}.zip" in e)]
        assert len(mine) == 1, (name, fragments, errors)
        assert not list(out.glob(f"{name}.*")), (name, sorted(p.name for p in out.iterdir()))
    for name in good:
        assert (out / f"{name}{ending}").is_file(), done.stderr[-3000:]
    assert f"{len(good)} predicted" in done.stderr and f"{len(bad)} failed" in done.stderr


def assert_api_refuses(segmenter, path, errors):
    """The Python API refuses the case with the very message the command printed."""
    with pytest.raises(CaseError) as refused:
        segmenter(path)
    assert one_line(str(refused.value)) in errors, (str(refused.value), errors)


# -- 1. pixel data that does not match its header ------------------------------------------------------------------
def _rle(ds):
    ds.compress(pydicom.uid.RLELossless)


def _rle_cut(ds):
    """RLE whose single fragment lost its end (a truncated export)."""
    _rle(ds)
    fragment = next(pydicom.encaps.generate_fragments(ds.PixelData))
    ds.PixelData = pydicom.encaps.encapsulate([fragment[:80]])


def _rle_no_fragment(ds):
    _rle(ds)
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # a basic offset table, no fragment


def _bits(n):
    def change(ds):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = n, n, n - 1
    return change


PIXEL_CASES = {  # name: (edit, the fragments of its error line)
    "short": (only(3, lambda ds: setattr(ds, "PixelData", ds.PixelData[:-100])),
              ("im0003.dcm", "PixelData (7FE0,0010) holds 1052 bytes", "declares 1152")),
    "bits32": (only(None, _bits(32)), ("im0000.dcm", "declares 2304", "BitsAllocated 32")),
    "bits8": (only(5, _bits(8)), ("im0005.dcm", "holds 1152 bytes", "declares 576")),
    "frames": (only(2, lambda ds: setattr(ds, "NumberOfFrames", 3)), ("im0002.dcm", "3 frame(s)")),
    "rle_cut": (only(4, _rle_cut), ("im0004.dcm", "RLE")),
    "rle_empty": (only(6, _rle_no_fragment), ("im0006.dcm", "0 fragment(s)")),
}


def test_pixel_data_that_does_not_match_its_header(model_folder, segmenter, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(inputs / "good")
    series(inputs / "good_rle", only(None, _rle))  # compressed and whole: read, and exactly
    series(inputs / "good_padded", only(1, lambda ds: setattr(ds, "PixelData", ds.PixelData + bytes(128))))
    for name, (edit, _) in PIXEL_CASES.items():
        series(inputs / name, edit)
    truncated = series(inputs / "cut_file")[5]  # the file itself ends early
    truncated.write_bytes(truncated.read_bytes()[:-300])
    big = write_series(inputs / "cut_big", np.zeros((8, 64, 64)))[6]  # pixel data past pydicom's deferral: on disk
    big.write_bytes(big.read_bytes()[:-1000])
    stumps = series(inputs / "stump")  # cut inside its header: no pixel data element at all
    stumps[1].write_bytes(stumps[1].read_bytes()[:700])
    bad = {name: fragments for name, (_, fragments) in PIXEL_CASES.items()}
    bad["cut_file"] = ("im0005.dcm", "PixelData (7FE0,0010) holds 852 bytes")
    bad["stump"] = ("im0001.dcm", "no pixel data")
    bad["cut_big"] = ("im0006.dcm", "the file ends 1000 bytes before the end of its PixelData (7FE0,0010)")
    done, errors = run(model_folder, inputs, out)
    assert_refused(done, errors, out, bad, good=("good", "good_rle", "good_padded"))
    assert "good_padded/im0001.dcm: PixelData (7FE0,0010) holds 128 bytes more than its header declares" in done.stderr
    for name in bad:
        assert_api_refuses(segmenter, inputs / name, errors)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_dicom(inputs / "good_rle").image), volume() - 1024.0)


def test_pixel_data_length_is_checked_before_reading(tmp_path, monkeypatch):
    """GDCM is never asked to read a series whose pixel data is short (it would read past the data)."""
    series(tmp_path / "short", only(0, lambda ds: setattr(ds, "PixelData", ds.PixelData[:10])))
    monkeypatch.setattr(sitk, "ImageSeriesReader", None)  # any read would fail with a TypeError, not a DicomError
    with pytest.raises(DicomError, match="holds 10 bytes"):
        read_dicom(tmp_path / "short")


# -- 2. rescales whose result leaves int16 ---------------------------------------------------------------------------
def test_rescale_never_wraps_and_bad_rescales_are_refused(model_folder, segmenter, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(inputs / "good")

    def steep(k, ds):  # per-slice slopes and intercepts, as some scanners write: far beyond int16 on slice 5
        ds.RescaleSlope, ds.RescaleIntercept = {5: ("200", "-1024"), 6: ("0.5", "-1000.25")}.get(k, ("1", "-1024"))

    series(inputs / "steep", steep)
    refused = {"slope_text": ("abc", "RescaleSlope (0028,1053)"), "slope_nan": ("nan", "RescaleSlope (0028,1053)"),
               "slope_zero": ("0", "RescaleSlope (0028,1053) is 0"), "huge": ("1e36", "beyond float32"),
               "intercept_inf": ("inf", "RescaleIntercept (0028,1052)")}
    for name, (value, _) in refused.items():
        tag = 0x00281052 if name.startswith("intercept") else 0x00281053
        series(inputs / name, only(3, lambda ds, tag=tag, value=value: set_text(ds, tag, "DS", value)))
    done, errors = run(model_folder, inputs, out)
    assert_refused(done, errors, out, {n: ("im0003.dcm", f) for n, (_, f) in refused.items()},
                   good=("good", "steep"))
    for name in refused:
        assert_api_refuses(segmenter, inputs / name, errors)
    # the values as the slices' own rescales give them: no wrap-around (an int16 series wrapped 100000 to -31072) and
    # no truncation (0.5 * stored - 1000.25 read into the first slice's int16)
    expected = volume().astype(np.float64) - 1024
    expected[5] = volume()[5] * 200.0 - 1024
    expected[6] = volume()[6] * 0.5 - 1000.25
    image = read_dicom(inputs / "steep").image
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected.astype(np.float32))
    assert sitk.GetArrayFromImage(image)[5].max() > 200_000
    result = segmenter.predict(inputs / "steep", keep_image=True)
    assert result.image.max() == pytest.approx(expected.max())


# -- 3. spacings that are not spacings -------------------------------------------------------------------------------
SPACINGS = {"zero": "0\\1.1", "nan": "nan\\1.1", "inf": "1.2\\inf", "text": "abc\\1.1", "negative": "-1.2\\1.1",
            "one_value": "1.2", "empty": ""}


def test_pixel_spacing_is_never_invented(model_folder, segmenter, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(inputs / "good")
    for name, text in SPACINGS.items():
        series(inputs / name, only(4, lambda ds, text=text: set_text(ds, 0x00280030, "DS", text)))

    def imager_only(ds):  # a projection's spacing at the detector is not the slice's: no fallback
        ds.ImagerPixelSpacing = ds.PixelSpacing
        del ds.PixelSpacing

    series(inputs / "missing", only(4, imager_only))
    done, errors = run(model_folder, inputs, out)
    bad = {name: ("im0004.dcm", "PixelSpacing (0028,0030)", repr(text) if text else "missing")
           for name, text in SPACINGS.items()}
    bad["missing"] = ("im0004.dcm", "PixelSpacing (0028,0030) missing")
    assert_refused(done, errors, out, bad)
    for name in bad:
        assert_api_refuses(segmenter, inputs / name, errors)
    image = read_dicom(inputs / "good").image  # the grid is the headers': PixelSpacing (row, column) -> (x, y)
    assert image.GetSpacing() == pytest.approx((1.1, 1.2, 2.5))


# -- 4. slices that disagree, and objects that are not slices --------------------------------------------------------
DISAGREE = {  # name: (edit of slice 6, the tag named)
    "spacing": (lambda ds: setattr(ds, "PixelSpacing", ["0.9", "1.1"]), "PixelSpacing (0028,0030)"),
    "rows": (lambda ds: (setattr(ds, "Rows", 12), setattr(ds, "PixelData", ds.PixelData[:12 * 24 * 2])),
             "Rows (0028,0010)"),
    "columns": (lambda ds: (setattr(ds, "Columns", 12), setattr(ds, "PixelData", ds.PixelData[:24 * 12 * 2])),
                "Columns (0028,0011)"),
    "modality": (lambda ds: setattr(ds, "Modality", "MR"), "Modality (0008,0060)"),
    "frame": (lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4"), "FrameOfReferenceUID (0020,0052)"),
}


def test_every_slice_is_checked_and_objects_that_are_not_slices_are_skipped(model_folder, segmenter, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(inputs / "good")
    for name, (change, _) in DISAGREE.items():
        series(inputs / name, only(6, change))
    # a CT folder holding every kind of object that is not a slice, some in the CT's own series
    files = series(inputs / "with_objects")
    first = pydicom.dcmread(files[0])
    for kind in ("SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "SR", "PR", "KO", "PDF"):
        own = kind in ("RTDOSE", "SR", "KO")  # in the CT's series: still not slices
        write_object(inputs / "with_objects" / f"{kind.lower()}.dcm", kind, study_uid=first.StudyInstanceUID,
                     series_uid=first.SeriesInstanceUID if own else None)
    write_object(inputs / "with_objects" / "anonymous_sr.dcm", "SR", modality="")  # only its SOP class says SR
    (inputs / "with_objects" / "README.txt").write_text("not DICOM")
    write_object(inputs / "structures_only" / "rtstruct.dcm", "RTSTRUCT")  # no images: not a case
    done, errors = run(model_folder, inputs, out)
    bad = {name: ("im0006.dcm", tag, "differs from", "im0000.dcm") for name, (_, tag) in DISAGREE.items()}
    assert_refused(done, errors, out, bad, good=("good", "with_objects"))
    assert f"{len(DISAGREE) + 2} case(s)" in done.stderr  # the folder of structures alone is no case
    warning = [line for line in done.stderr.splitlines() if "not image slices skipped" in line]
    assert len(warning) == 1 and "9 DICOM object(s)" in warning[0] and "rtdose.dcm (RTDOSE)" in warning[0]
    assert any("not DICOM ignored: README.txt" in line for line in done.stderr.splitlines())
    for name in bad:
        assert_api_refuses(segmenter, inputs / name, errors)
    with pytest.warns(UserWarning, match="9 DICOM object"):
        labels = segmenter(inputs / "with_objects")
    assert labels.GetSize() == (24, 24, 8)
    assert dicom.series_in(inputs / "with_objects") == [first.SeriesInstanceUID]
    with pytest.raises(DicomError, match="no DICOM image series found .only objects that are not images: rtstruct"):
        read_dicom(inputs / "structures_only")


# -- 10. zip bombs -----------------------------------------------------------------------------------------------------
def _patch_sizes(source, target, sizes: dict[str, int]) -> None:
    """``source`` with the uncompressed sizes of some members rewritten (central directory and local headers): a zip
    that lies."""
    data = bytearray(source.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack("<H", data[at + 28:at + 30])[0]
        name = data[at + 46:at + 46 + length].decode()
        if name in sizes:
            struct.pack_into("<I", data, at + 24, sizes[name])
            struct.pack_into("<I", data, struct.unpack("<I", data[at + 42:at + 46])[0] + 22, sizes[name])
        at = data.find(b"PK\x01\x02", at + 4)
    target.write_bytes(bytes(data))


def test_zip_bombs_are_refused_before_extraction(model_folder, segmenter, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(tmp_path / "series")
    inputs.mkdir()
    zip_folder(tmp_path / "series", inputs / "good.zip")
    bomb = zip_folder(tmp_path / "series", inputs / "bomb.zip")
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("padding.bin", bytes(64 * 2 ** 20))  # 64 MiB of zeros in about 64 KiB
    _patch_sizes(bomb, inputs / "liar.zip", {"padding.bin": 1000})  # declares 1000 bytes, inflates to 64 MiB
    big = zip_folder(tmp_path / "series", tmp_path / "big.zip")
    _patch_sizes(big, inputs / "huge.zip", {"im0000.dcm": 3 * 2 ** 30, "im0001.dcm": 3 * 2 ** 30})
    escape = inputs / "escape.zip"
    with zipfile.ZipFile(escape, "w") as archive:
        archive.writestr("../outside.dcm", b"x")
    done, errors = run(model_folder, inputs, out)
    bad = {"bomb": ("bomb.zip", "ratio", "over 100", "not extracted"),
           "liar": ("liar.zip", "not a readable zip", "padding.bin"),
           "huge": ("huge.zip", "extracts to 6.00 GiB, over the 4.00 GiB"),
           "escape": ("escape.zip", "outside the folder")}
    assert_refused(done, errors, out, bad)
    assert not (inputs / "outside.dcm").exists() and not (tmp_path / "outside.dcm").exists()
    for name in bad:
        assert_api_refuses(segmenter, inputs / f"{name}.zip", errors)
    # the limits hold while extracting too: nothing beyond a member's declared size is written
    (tmp_path / "x").mkdir()
    with pytest.raises(DicomError, match="not a readable zip"):
        extract_zip(inputs / "liar.zip", tmp_path / "x")
    assert all(p.stat().st_size <= 2 ** 20 for p in (tmp_path / "x").iterdir())
    assert dicom.MAX_ZIP_BYTES == 4 * 2 ** 30 and dicom.MAX_ZIP_RATIO == 100


# -- 13. anonymised series and the DICOM-SEG -----------------------------------------------------------------------
def _blank(*keywords, meta: str | None = None):
    def change(ds):
        for keyword in keywords:
            setattr(ds, keyword, "")
        if meta:
            setattr(ds.file_meta, meta, "")
    return change


def _removed(*keywords):
    def change(ds):
        for keyword in keywords:
            del ds[keyword]
    return change


TWIN_UID = "1.2.826.0.1.3680043.8.498.99"


def _twin(ds):
    """Slice 3 given the instance UID slice 4 gets as well (an anonymiser that maps UIDs carelessly)."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = TWIN_UID


def test_anonymised_series_get_a_seg_or_one_line_before_the_network(model_folder, segmenter, tmp_path):
    from stunet.clinical.dicom_seg import check_source_for_seg, read_dicom_seg
    highdicom = pytest.importorskip("highdicom")
    inputs, out = tmp_path / "in", tmp_path / "out"
    series(inputs / "good")
    # repaired: the class and instance only in the file meta, patient and study attributes removed
    series(inputs / "anonymised", only(None, lambda ds: (_blank("SOPClassUID", "SOPInstanceUID")(ds), _removed(
        "PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime", "SliceThickness")(ds))))
    refused = {
        "no_class": (only(None, _blank("SOPClassUID", meta="MediaStorageSOPClassUID")), "SOPClassUID (0008,0016)"),
        "no_instance": (only(2, _blank("SOPInstanceUID", meta="MediaStorageSOPInstanceUID")),
                        "SOPInstanceUID (0008,0018)"),
        "no_study": (only(None, _blank("StudyInstanceUID")), "StudyInstanceUID (0020,000D)"),
        "no_frame": (only(None, _removed("FrameOfReferenceUID")), "FrameOfReferenceUID (0020,0052)"),
        "no_modality": (only(None, _blank("Modality")), "Modality (0008,0060)"),
        "twins": (only(3, _twin), "SOPInstanceUID (0008,0018)"),
    }
    for name, (edit, _) in refused.items():
        series(inputs / name, edit)
    twins = sorted((inputs / "twins").glob("*.dcm"))
    other = pydicom.dcmread(twins[4])
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = TWIN_UID
    other.save_as(twins[4])
    done, errors = run(model_folder, inputs, out, "--output-type", "dicom_seg")
    assert_refused(done, errors, out, {n: (str(inputs / n), tag) for n, (_, tag) in refused.items()},
                   good=("good", "anonymised"), ending=".seg.dcm")
    for name, (_, tag) in refused.items():  # the same check the command runs, from Python
        files = segmenter.predict(inputs / name, warn=False).series.files
        with pytest.raises(CaseError) as error:
            check_source_for_seg(files)
        assert one_line(str(error.value)) in errors and tag in str(error.value)
    # the anonymised series' SEG opens in highdicom and references every slice (by the file meta's UIDs)
    source = read_dicom(inputs / "anonymised")
    document = highdicom.seg.segread(str(out / "anonymised.seg.dcm"))
    metas = [pydicom.dcmread(f).file_meta for f in source.files]
    referenced = {item.ReferencedSOPInstanceUID
                  for item in document.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {m.MediaStorageSOPInstanceUID for m in metas} and len(referenced) == SHAPE[0]
    assert {item.ReferencedSOPClassUID for item in document.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == {"1.2.840.10008.5.1.4.1.1.2"}
    names = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}
    labels = segmenter(inputs / "anonymised")
    np.testing.assert_array_equal(read_dicom_seg(out / "anonymised.seg.dcm", source.files, names),
                                  sitk.GetArrayFromImage(labels))
    with pytest.warns(UserWarning, match="SOPClassUID from the file meta's MediaStorageSOPClassUID in 8 of 8"):
        notes = check_source_for_seg(source.files)
    assert len(notes) == 3 and ("PatientName, PatientID, PatientBirthDate, StudyDate, StudyTime, SliceThickness "
                                "missing in 8 of 8 slice(s); written empty") in notes[2]


def test_a_file_the_reader_cannot_read_is_named(tmp_path):
    """GDCM refuses a slice whose SOP class it does not know: the error names that file and its class."""
    series(tmp_path / "private", only(5, lambda ds: setattr(ds, "SOPClassUID", "1.2.3.4.5")))
    with pytest.raises(DicomError, match=r"im0005.dcm: GDCM cannot read it \(SOPClassUID 1.2.3.4.5"):
        read_dicom(tmp_path / "private")


@pytest.mark.skipif("for_seg" not in __import__("inspect").signature(
    __import__("stunet.prediction.case", fromlist=["predict_case"]).predict_case).parameters,
    reason="predict_case(for_seg=) not wired yet: the SEG check runs at writing time only")
def test_the_seg_check_runs_before_the_network(segmenter, tmp_path, monkeypatch):
    pytest.importorskip("highdicom")
    series(tmp_path / "no_study", only(None, _blank("StudyInstanceUID")))
    series(tmp_path / "anonymised", only(None, _blank("SOPClassUID")))

    def network(*args, **kwargs):
        raise AssertionError("the network ran before the SEG check")

    with monkeypatch.context() as patch:
        patch.setattr(segmenter, "segment_preprocessed", network)
        with pytest.raises(CaseError, match=r"no_study/im0000.dcm: StudyInstanceUID \(0020,000D\)"):
            segmenter.predict(tmp_path / "no_study", for_seg=True)
    result = segmenter.predict(tmp_path / "anonymised", for_seg=True, warn=False)
    assert any("SOPClassUID from the file meta's MediaStorageSOPClassUID in 8 of 8" in n for n in result.notes)
