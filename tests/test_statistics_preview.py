"""--statistics numbers against a hand-computed case; --preview a PNG of the documented size showing label colours."""
import math

import numpy as np

from stunet.clinical.preview import SIZE, colour, write_preview
from stunet.clinical.statistics import csv_rows, csv_text, label_statistics


def test_statistics_by_hand():
    seg = np.zeros((4, 5, 6), np.uint8)
    image = np.zeros((4, 5, 6), np.float32)
    seg[1:3, 1:3, 1:3] = 1          # 8 voxels inside
    image[1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2)   # 0..7
    seg[0, 0, 5] = 2                # 1 voxel on the border
    image[0, 0, 5] = -100
    stats = label_statistics(seg, image, (2.0, 1.0, 0.5), {0: "background", 1: "liver", 2: "spleen", 3: "kidney"})
    liver = stats["liver"]
    assert liver["voxels"] == 8 and math.isclose(liver["volume_ml"], 8 * 1.0 / 1000)
    assert liver["mean"] == 3.5 and liver["median"] == 3.5 and liver["min"] == 0 and liver["max"] == 7
    assert math.isclose(liver["std"], math.sqrt(sum((v - 3.5) ** 2 for v in range(8)) / 8))
    assert liver["touches_border"] is False
    assert stats["spleen"] == {"label": 2, "voxels": 1, "volume_ml": 0.001, "mean": -100, "std": 0, "median": -100,
                               "min": -100, "max": -100, "touches_border": True}
    assert stats["kidney"]["voxels"] == 0 and math.isnan(stats["kidney"]["mean"])
    text = csv_text(csv_rows("a", stats))
    assert text.splitlines()[0].startswith("case,label,name,voxels,volume_ml") and "a,1,liver,8,0.008,3.5" in text


def test_preview_png(tmp_path):
    import matplotlib.image

    seg = np.zeros((10, 30, 40), np.uint8)
    seg[3:7, 10:20, 10:30] = 3
    image = np.random.default_rng(0).normal(size=seg.shape).astype(np.float32)
    write_preview(tmp_path / "p.png", image, seg, (3.0, 1.0, 1.0), {3: "kidney_left"}, title="case")
    picture = matplotlib.image.imread(str(tmp_path / "p.png"))
    assert picture.shape[:2] == (SIZE[1], SIZE[0])
    rgb = (picture[..., :3] * 255).round().astype(int).reshape(-1, 3)
    assert np.any(np.all(rgb == colour(3), axis=1)), "label 3's colour is missing"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nifti_carries_label_names(tmp_path):
    import json

    import nibabel as nib
    import SimpleITK as sitk

    from stunet.prediction.outputs import describe_nifti

    image = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3)
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(tmp_path / "s.nii.gz"))
    before = nib.load(str(tmp_path / "s.nii.gz"))
    voxels, affine = np.asarray(before.dataobj), before.affine
    describe_nifti(tmp_path / "s.nii.gz", {0: "background", 1: "liver", 2: "spleen"})
    after = nib.load(str(tmp_path / "s.nii.gz"))
    assert after.header["descrip"].tobytes().rstrip(b"\0") == b"stunet labels 1=liver;2=spleen"
    assert json.loads(after.header.extensions[0].get_content()) == {"0": "background", "1": "liver", "2": "spleen"}
    np.testing.assert_array_equal(np.asarray(after.dataobj), voxels)
    assert np.allclose(after.affine, affine) and after.get_data_dtype() == np.uint8
