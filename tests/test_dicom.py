"""DICOM in, NIfTI and DICOM-SEG out, in the right place.

Geometry tests: the network is replaced by a voxelwise threshold (features = preprocessed intensity minus the midpoint
of its range, a head giving label 1 where it is positive), everything else being the real path: GDCM series reading,
nnU-Net preprocessing (crop, resampling to the model's spacing, normalisation), resampling back and export. A bright
cube written at known (slice, row, column) of a synthetic series must be labelled at its patient position."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dicom_helpers import voxel_position, write_series
from predict_helpers import make_model_folder

pytest.importorskip("highdicom")

from stunet.clinical.dicom import DicomError, read_dicom  # noqa: E402
from stunet.clinical.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from stunet.prediction.segmenter import Segmenter  # noqa: E402

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}


@pytest.fixture(scope="module")
def thresholder(tmp_path_factory):
    seg = Segmenter.from_model_folder(make_model_folder(tmp_path_factory.mktemp("model")), device="cpu",
                                      mirroring=False)
    network = seg.model.networks[0]
    width = network.config.widths[0]
    with torch.no_grad():
        head = network.seg_outputs[-1]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0., 0., -1e3, -1e3, -1e3]))
        head.weight[1, 0] = 1.0  # label 1 where feature 0 > 0

    def feature_slabs(data, progress=None, on_start=None, window=True):  # one slab: the whole image
        middle = (data.max() + data.min()) / 2
        yield 0, [torch.cat([data[:1] - middle, torch.zeros((width - 1, *data.shape[1:]))]).movedim(0, -1)]

    seg.predictor.feature_slabs = feature_slabs
    return seg


CASES = {  # name: arguments of write_series
    "axial_head_first": dict(row_dir=(1, 0, 0), col_dir=(0, 1, 0), pixel_spacing=(0.8, 0.8)),
    "feet_first": dict(row_dir=(-1, 0, 0), col_dir=(0, 1, 0), pixel_spacing=(0.8, 0.8)),
    "oblique": dict(row_dir=(np.cos(0.4), np.sin(0.4), 0),
                    col_dir=(-np.sin(0.4) * np.cos(0.3), np.cos(0.4) * np.cos(0.3), np.sin(0.3)),
                    pixel_spacing=(1.1, 0.9)),
    "sagittal_flipped_files": dict(row_dir=(0, 1, 0), col_dir=(0, 0, -1), pixel_spacing=(1.0, 1.0),
                                   file_order=list(range(12))[::-1]),
    "anisotropic": dict(row_dir=(1, 0, 0), col_dir=(0, 1, 0), pixel_spacing=(0.6, 1.4),
                        slice_step=(0, 0, 4.0)),
    "rescaled": dict(row_dir=(1, 0, 0), col_dir=(0, 1, 0), pixel_spacing=(0.8, 0.8), slope=2.0, intercept=-1024.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bright_object_where_it_is(thresholder, name, tmp_path):
    args = dict(CASES[name])
    slope, intercept = args.get("slope", 1.0), args.get("intercept", 0.0)
    volume = np.full((12, 28, 30), int(round((-1000 - intercept) / slope)), np.int16)  # air
    volume[4:8, 9:17, 18:26] = int(round((800 - intercept) / slope))                   # bone-bright cube
    write_series(tmp_path / "dcm", volume, origin=(-40, 25, 100), **args)
    series = read_dicom(tmp_path / "dcm")
    labels = thresholder(series.image)
    normal = np.cross(args["row_dir"], args["col_dir"])
    step = args.get("slice_step", normal * 2.5)
    array = sitk.GetArrayFromImage(labels)
    # resampling to the model's 1.5 mm and back moves the cube's edges by at most a voxel: count within 15 %, the
    # labelled voxels' centre within half the largest pixel spacing of the cube's centre, in patient coordinates
    assert abs(int(array.sum()) - 4 * 8 * 8) <= 0.15 * 4 * 8 * 8, (name, array.sum())
    at = lambda k, r, c: voxel_position((-40, 25, 100), args["row_dir"], args["col_dir"], args["pixel_spacing"],
                                        step, k, r, c)
    labelled = np.argwhere(array == 1)
    centre = np.mean([labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in i[::-1]]) for i in labelled],
                     axis=0)
    assert np.linalg.norm(centre - at(5.5, 12.5, 21.5)) < 0.5 * max(args["pixel_spacing"]), (name, centre)
    for k, r, c in [(5, 12, 21), (6, 10, 19), (5, 15, 24)]:  # inside the cube, by patient position
        assert array[labels.TransformPhysicalPointToIndex(tuple(at(k, r, c)))[::-1]] == 1, (name, k, r, c)
    for k, r, c in [(1, 12, 21), (10, 12, 21), (5, 3, 21), (5, 12, 5)]:  # outside, on each side
        assert array[labels.TransformPhysicalPointToIndex(tuple(at(k, r, c)))[::-1]] == 0, (name, k, r, c)
    assert sitk.GetArrayFromImage(series.image)[volume == volume.max()].mean() == 800  # HU after rescale
    # NIfTI written from it and SEG written on the source slices agree voxel for voxel, in the same place
    sitk.WriteImage(labels, str(tmp_path / "seg.nii.gz"))
    write_dicom_seg(tmp_path / "seg.dcm", array.astype(np.uint8), series.files, NAMES)
    back = read_dicom_seg(tmp_path / "seg.dcm", series.files, NAMES)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))))
    nifti = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert np.allclose(nifti.GetOrigin(), series.image.GetOrigin(), atol=1e-4)
    assert np.allclose(nifti.GetDirection(), series.image.GetDirection(), atol=1e-6)


def test_refusals(tmp_path):
    volume = np.zeros((5, 8, 8), np.int16)
    write_series(tmp_path / "mixed", volume)
    write_series(tmp_path / "mixed", volume, file_order=range(5, 10))  # a second series in the same folder
    with pytest.raises(DicomError, match="2 DICOM series mixed"):
        read_dicom(tmp_path / "mixed")
    one = read_dicom(tmp_path / "mixed" / "im0007.dcm")  # a single file: its own series of the folder's two
    assert [f.name for f in one.files] == [f"im{k:04d}.dcm" for k in range(5, 10)]
    write_series(tmp_path / "tilt", volume, slice_step=(0, 0.8, 2.5))
    with pytest.raises(DicomError, match="gantry tilt"):
        read_dicom(tmp_path / "tilt")
    write_series(tmp_path / "gap", volume, positions=[(0, 0, z) for z in (0, 2.5, 5, 10, 12.5)])
    with pytest.raises(DicomError, match="non-uniform slice spacing"):
        read_dicom(tmp_path / "gap")
    write_series(tmp_path / "pet", volume, modality="PT")
    with pytest.warns(UserWarning, match="modality PT"):
        assert read_dicom(tmp_path / "pet").modality == "PT"
