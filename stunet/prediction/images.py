"""In-memory images and the plans' reader: a SimpleITK or nibabel image, or a numpy array with its geometry, turned
into what nnU-Net's reader gives for a file, and a label map turned back into an image on the input's grid.

The reader's properties are built from an in-memory image as nnU-Net's SimpleITK reader builds them from a file; a
model whose plans name another reader gets its own reading of a temporary NIfTI file, so both paths give the reader
output that nnU-Net would.
"""
from __future__ import annotations

from pathlib import Path
import tempfile
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from stunet.errors import CaseError
from stunet.io.reader import ImageFile
from stunet.prediction.checks import check_image

_LPS = np.diag([-1.0, -1.0, 1.0])  # nibabel's RAS+ world <-> ITK's LPS+ world


def is_nibabel(image) -> bool:
    return hasattr(image, "affine") and hasattr(image, "dataobj")


def _properties(spacing, origin, direction) -> dict:
    """The properties nnU-Net's ``SimpleITKIO.read_images`` gives for a 3D file of this geometry."""
    return {"sitk_stuff": {"spacing": spacing, "origin": origin, "direction": direction},
            "spacing": list(np.abs(list(spacing)[::-1]))}


def sitk_properties(image: sitk.Image) -> tuple[np.ndarray, dict]:
    """(channels, z, y, x) float32 array and the properties nnU-Net's ``SimpleITKIO.read_images`` gives for a file
    holding ``image`` (3D, scalar: :func:`stunet.prediction.checks.check_image` has checked it)."""
    properties = _properties(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), properties


def files_reader_output(opened: Sequence[ImageFile]) -> tuple[np.ndarray, dict, list[str]]:
    """What nnU-Net's ``SimpleITKIO.read_images`` gives for checked channel files (one float32 array, channels first,
    and the first file's geometry), each file's voxels read once by :meth:`stunet.io.reader.ImageFile.read` (NaN and
    infinite NIfTI voxels kept, where ITK reads 0), and the reader's notes."""
    array = np.empty((len(opened), *reversed(opened[0].size)), dtype=np.float32)
    notes, geometry = [], None
    try:
        for channel, image in zip(array, opened):
            read = image.read()
            channel[...] = read.array
            notes += read.notes
            geometry = geometry or (read.spacing, read.origin, read.direction)
            del read
    finally:
        for image in opened:
            image.close()
    return array, _properties(*geometry), notes


def nibabel_to_sitk(image, name: str = "the image") -> sitk.Image:
    """A nibabel image as a SimpleITK image of the same voxels in the same place (RAS affine -> LPS geometry)."""
    return array_to_sitk(np.asanyarray(image.dataobj), affine=image.affine, name=name)


def array_to_sitk(array: np.ndarray, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                  name: str = "the array") -> sitk.Image:
    """A numpy array indexed (i, j, k) like nibabel's data, placed by a RAS voxel-to-world ``affine`` (nibabel's
    convention) or, without one, by ``spacing`` (per array axis, mm) on an identity RAS grid. Shapes and geometries
    that are not one 3D scalar image are refused with the messages the file checks give."""
    array = np.asarray(array)
    if array.dtype.names:  # nibabel's RGB voxels: a structured dtype
        check_image(name, array.ndim, array.shape, (1.0,) * array.ndim, len(array.dtype.names))
    check_image(name, array.ndim, array.shape, (1.0,) * array.ndim, complex_values=np.iscomplexobj(array))
    if array.dtype.kind not in "biuf":
        raise CaseError(f"{name}: voxels of type {array.dtype}; a real-valued (integer or float) image is needed")
    given_affine = affine is not None
    if affine is None:
        if spacing is None:
            raise CaseError(f"{name}: a numpy array needs spacing= (mm per axis) or affine= (4x4, RAS) to be placed")
        spacing = list(np.ravel(np.asarray(spacing, dtype=float)))
        if len(spacing) != 3:
            raise CaseError(f"{name}: spacing {tuple(spacing)} has {len(spacing)} values; give one per axis (3)")
        affine = np.diag([*spacing, 1.0])
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise CaseError(f"{name}: the affine has shape {affine.shape}; give a 4x4 voxel-to-world matrix (RAS)")
    lps = _LPS @ affine[:3, :3]
    zooms = np.linalg.norm(lps, axis=0)
    check_image(name, 3, array.shape, tuple(zooms), spacing_source="the affine's" if given_affine else "the")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(zooms))
    image.SetOrigin(tuple(_LPS @ affine[:3, 3]))
    image.SetDirection(tuple((lps / zooms).ravel()))
    return image


def reader_output(model, images: list[sitk.Image], read_files) -> tuple[np.ndarray, dict]:
    """The plans' reader output for in-memory SimpleITK images, one per channel (checked and consistent).
    ``read_files(paths)`` reads files with the plans' reader, for plans whose reader is not nnU-Net's SimpleITK one."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    if model.plans_manager.image_reader_writer_class is SimpleITKIO:
        parts = [sitk_properties(i) for i in images]
        return np.vstack([p[0] for p in parts]), parts[0][1]
    with tempfile.TemporaryDirectory(prefix="stunet-") as tmp:
        files = [Path(tmp) / f"image_{c:04d}.nii.gz" for c in range(len(images))]
        for path, image in zip(files, images):
            sitk.WriteImage(image, str(path))
        return read_files(files)


def labels_to_sitk(model, seg: np.ndarray, properties: dict) -> sitk.Image:
    """A label map (z, y, x) on the input grid as a SimpleITK image (through the plans' writer when the reader is not
    nnU-Net's SimpleITK one)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    if model.plans_manager.image_reader_writer_class is SimpleITKIO:
        out = sitk.GetImageFromArray(seg)
        out.SetSpacing(properties["sitk_stuff"]["spacing"])
        out.SetOrigin(properties["sitk_stuff"]["origin"])
        out.SetDirection(properties["sitk_stuff"]["direction"])
        return out
    writer = model.plans_manager.image_reader_writer_class()
    with tempfile.TemporaryDirectory(prefix="stunet-") as tmp:
        writer.write_seg(seg, str(Path(tmp) / "seg.nii.gz"), properties)
        return sitk.ReadImage(str(Path(tmp) / "seg.nii.gz"))
