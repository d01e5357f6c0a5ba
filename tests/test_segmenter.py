"""stunet.Segmenter: one model in memory, images of every kind in, the same kind out on the input's grid, the same
labels as stunet-predict (tests/test_one_path.py: the same checks, and calls serialised between threads)."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import stunet
from predict_helpers import labels_of, make_model_folder, predict, write_image
from stunet.nnunet.synthetic import make_case


@pytest.fixture(scope="module")
def segmenter_and_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    model = make_model_folder(root / "model")
    images, _ = make_case(np.random.default_rng(5), (10, 24, 20), 1)
    (root / "in").mkdir()
    write_image(root / "in" / "c_0000.nii.gz", images[0], seed=3)
    seg = stunet.Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    return seg, root, model


def test_kinds_agree_with_the_cli(segmenter_and_case):
    seg, root, model = segmenter_and_case
    path = root / "in" / "c_0000.nii.gz"
    predict("-i", root / "in", "-o", root / "out", "-m", model, "--disable-tta")
    cli = labels_of(root / "out" / "c.nii.gz")
    from_path = seg(path)
    assert isinstance(from_path, sitk.Image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_path), cli)
    image = sitk.ReadImage(str(path))
    out, probs = seg(image, probabilities=True)
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    assert out.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), cli)
    assert probs.shape == (5, *cli.shape) and probs.dtype == np.float16
    nii = nib.load(str(path))
    out = seg(nii)
    assert isinstance(out, nib.Nifti1Image) and np.allclose(out.affine, nii.affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), cli.transpose(2, 1, 0))
    assert b"1=liver" in out.header["descrip"].tobytes()
    array = np.asanyarray(nii.dataobj)
    out = seg(array, affine=nii.affine)
    np.testing.assert_array_equal(out, cli.transpose(2, 1, 0))


def test_array_needs_geometry(segmenter_and_case):
    seg, _, _ = segmenter_and_case
    with pytest.raises(ValueError, match="spacing"):
        seg(np.zeros((8, 8, 8), np.float32))
