"""One reader for image files: prediction, evaluation, reports and the label statistics read through it.

:class:`ImageFile` opens a file without reading its voxels: ITK reads the header alone, and the header is checked
against the file (a NRRD or MetaImage header naming a data file outside its folder is refused, a NIfTI pixdim must be
finite and positive). :meth:`ImageFile.check` (or the caller's own check of :attr:`ImageFile.size` and
:attr:`ImageFile.spacing`) then refuses what the header's values say before any voxel is allocated: the dimension, one
real-valued component, a voxel count over the caller's limit, a spacing that is not finite and positive or lies
outside :data:`SPACING_RANGE_MM`. :meth:`ImageFile.read` reads the voxels once:

- a NIfTI file through nibabel (one decompression of a .nii.gz; a truncated gzip stream raises; NaN and infinite
  voxels are kept where ITK reads them as 0; a qform and sform that disagree give a note saying which one ITK's
  geometry follows);
- other formats (NRRD, MetaImage) through ITK, after the voxel data their header declares is found in the file.

Names ITK cannot open (:func:`stunet.paths.itk_readable`) are read through links. The result, :class:`Image`, holds
the voxels in ITK's array order (z, y, x) and ITK's geometry (spacing, origin, direction, x-y-z order): what nnU-Net's
SimpleITK reader builds its output from.

Readers without a budget of their own (evaluation, reports) refuse images over :data:`DEFAULT_MAX_VOXELS` (2e9 voxels,
4 GB as 16-bit labels; a whole-body CT at 0.5 mm is under 5e8); prediction checks its voxel budget instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import gzip
import math
from pathlib import Path
import tempfile
from typing import Sequence
import zlib

import numpy as np
import SimpleITK as sitk

from stunet.errors import CaseError
from stunet.io.headers import check_data_files, check_data_size, header_spacing
from stunet.paths import image_ending, itk_can_open, itk_readable

# the voxel sizes (mm) of real CT, MR and PET images lie well inside this range; outside it a header is wrong (a unit
# mix-up, a placeholder) and any result computed at that scale would be meaningless
SPACING_RANGE_MM = (0.01, 50.0)
DEFAULT_MAX_VOXELS = 2_000_000_000
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
_LPS = np.diag([-1.0, -1.0, 1.0])  # ITK's LPS+ world <-> nibabel's RAS+ world


@dataclass
class Image:
    """Voxels in ITK's array order (z, y, x) and ITK's geometry (x, y, z order; ``direction`` row by row)."""
    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    notes: list[str] = field(default_factory=list)  # what the reading found worth saying (a qform/sform mismatch)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Image":
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def check_spacing(name, spacing: Sequence[float], source: str = "the", plausible: bool = True) -> None:
    """Raise CaseError unless every spacing is finite and positive (and, with ``plausible``, in SPACING_RANGE_MM)."""
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CaseError(f"{name}: {source} spacing {tuple(spacing)} is not finite and positive; fix the header (the "
                        f"segmentation would be computed at a made-up scale)")
    low, high = SPACING_RANGE_MM
    if plausible and not all(low <= s <= high for s in spacing):
        raise CaseError(f"{name}: {source} spacing {tuple(float(f'{s:.4g}') for s in spacing)} mm is outside the "
                        f"plausible {low:g}-{high:g} mm; fix the header (the segmentation would be computed at a "
                        f"made-up scale)")


def check_geometry(name, dimension: int, size: Sequence[int], spacing: Sequence[float], components: int = 1,
                   complex_values: bool = False, spacing_source: str = "the", dimensions: Sequence[int] = (3,),
                   max_voxels: int | None = None) -> None:
    """Raise CaseError unless this is one scalar real image of a dimension in ``dimensions``, with voxels (at most
    ``max_voxels``) and a plausible spacing (``size`` and ``spacing`` in ITK's x, y, z order; ``name`` is what the
    message calls it)."""
    size = tuple(int(s) for s in size)
    if dimension not in dimensions:
        wanted = " or ".join(f"{d}D" for d in dimensions)
        raise CaseError(f"{name}: a {dimension}D image of size {size}; expected a {wanted} image"
                        + (" (one file per channel)" if tuple(dimensions) == (3,) else ""))
    if complex_values:
        raise CaseError(f"{name}: complex-valued voxels; a real-valued image is needed (give its magnitude)")
    if components != 1:
        raise CaseError(f"{name}: {components} components per voxel (an RGB or vector image); a scalar image is "
                        f"needed (one file per channel)")
    if 0 in size:
        raise CaseError(f"{name}: empty image (size {size})")
    if max_voxels is not None and math.prod(size) > max_voxels:
        raise CaseError(f"{name}: its header declares {math.prod(size):,} voxels ({' x '.join(map(str, size))}), "
                        f"over the limit of {max_voxels:,} for one image; a damaged header, or crop the image first")
    check_spacing(name, tuple(float(s) for s in spacing), spacing_source)


def itk_error_detail(error: Exception) -> str:
    """The last line of an ITK error, without ITK's prefix: what a one-line message can quote."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].replace("sitk::ERROR: ", "").replace("ITK ERROR: ", "") if lines else "unreadable"


class ImageFile:
    """An image file with its header read and checked against the file; :meth:`read` reads its voxels. ``name`` is
    what messages call it (default: the path); ``workdir`` holds a link where ITK cannot open the name (the caller
    removes it; without one, a folder of this object's own, removed by :meth:`close`)."""

    def __init__(self, path: str | Path, workdir: str | Path | None = None, name=None):
        self.path = Path(path)
        self.name = str(name if name is not None else self.path)
        self._own = None
        try:
            if itk_can_open(self.path):
                self.link = self.path
            else:
                if workdir is None:
                    self._own = tempfile.TemporaryDirectory(prefix="stunet-read-")
                    workdir = self._own.name
                self.link = itk_readable(self.path, workdir)
            self.nifti = image_ending(self.path) in (".nii", ".nii.gz")
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _named(self, error: CaseError) -> CaseError:
        """The error with the link's name replaced by the file's."""
        return CaseError(str(error).replace(str(self.link), self.name)) if self.link != self.path else error

    def _read_header(self) -> None:
        try:
            check_data_files(self.link)
        except CaseError as e:
            raise self._named(e) from None
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(self.link))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise CaseError(f"{self.name}: cannot read it as an image ({itk_error_detail(e)[:200]})") from e
        self.dimension = reader.GetDimension()
        self.size, self.spacing = reader.GetSize(), reader.GetSpacing()
        self.origin, self.direction = reader.GetOrigin(), reader.GetDirection()
        self.components = reader.GetNumberOfComponents()
        self.complex_values = reader.GetPixelID() in _COMPLEX
        if self.dimension == 3 and 0 not in self.size:
            stated = header_spacing(self.link)
            if stated is not None:
                check_spacing(self.name, stated, "the header's (pixdim)", plausible=False)  # in its units

    def check(self, max_voxels: int | None = DEFAULT_MAX_VOXELS, dimensions: Sequence[int] = (3,)) -> "ImageFile":
        """:func:`check_geometry` of the header's values."""
        check_geometry(self.name, self.dimension, self.size, self.spacing, self.components, self.complex_values,
                       dimensions=dimensions, max_voxels=max_voxels)
        return self

    def check_data(self) -> None:
        """The voxel data the header declares, found in the file (for compressed data, a bounded streaming
        decompression): for a reader that reads the file on its own and would fill missing voxels with zeros."""
        try:
            check_data_size(self.link)
        except CaseError as e:
            raise self._named(e) from None

    def read(self) -> Image:
        """The voxels, read once (see the module's docstring); the file's own link folder is removed after."""
        try:
            if self.nifti:
                return self._read_nifti()
            self.check_data()
            try:
                image = sitk.ReadImage(str(self.link))
            except RuntimeError as e:
                detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise CaseError(f"{self.name}: cannot read it ({detail[:200]})") from e
            return Image.from_sitk(image)
        finally:
            self.close()

    def _read_nifti(self) -> Image:
        import nibabel as nib

        if not self.link.name.lower().endswith(".gz"):
            self.check_data()  # the file's size against the header: no decompression
        try:
            nifti = nib.load(str(self.link), mmap=False)
        except Exception as e:  # nibabel's errors are many and bare: name the file
            raise CaseError(f"{self.name}: cannot read it as NIfTI ({str(e).strip()[:200] or type(e).__name__})"
                            ) from e
        header = nifti.header
        try:
            data = np.asanyarray(nifti.dataobj)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise CaseError(self._truncated(header, e)) from None
        if data.size != math.prod(self.size):
            raise CaseError(f"{self.name}: nibabel reads {data.shape} voxels where its header gives ITK "
                            f"{tuple(self.size)}; not read")
        array = data.reshape(self.size, order="F").T  # (x, y, z) as stored -> ITK's (z, y, x), no copy
        note = self.form_note(header)
        return Image(array, self.spacing, self.origin, self.direction, [note] if note else [])

    def _truncated(self, header, error: Exception) -> str:
        needed = math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        held = None
        if text.startswith("Expected ") and " got " in text:  # nibabel: "Expected N bytes, got M bytes from ..."
            held = int(text.split(" got ")[1].split()[0])
        what = ("holds none (a header only)" if held == 0 else f"holds {held:,}" if held is not None else
                f"ends before them ({text[:160]})")
        kind = "truncated gzip file" if self.link.name.lower().endswith(".gz") else "truncated file"
        return f"{self.name}: {kind}: the header declares {needed:,} bytes of voxel data, the file {what}; skipped"

    def form_note(self, header=None) -> str | None:
        """A note when a NIfTI file's qform and sform place the image differently (by more than 0.01 mm at a corner):
        the image is placed where ITK reads it, which the note states (other tools that prefer the other form show
        it elsewhere). None when they agree, one of them is unset, or the file is not NIfTI."""
        if not self.nifti:
            return None
        if header is None:
            import nibabel as nib
            try:
                header = nib.load(str(self.link)).header  # the header alone
            except Exception:  # nibabel cannot read what ITK could: nothing to compare
                return None
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        if not qcode or not scode or len(self.spacing) != 3:
            return None
        shape = np.array(header.get_data_shape()[:3]) - 1
        corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]).T
        apart = float(np.abs((qform - sform) @ corners).max())
        if apart <= 0.01:
            return None
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        itk = np.eye(4)
        itk[:3, :3] = _LPS @ direction @ np.diag(np.asarray(self.spacing, dtype=float))
        itk[:3, 3] = _LPS @ np.asarray(self.origin, dtype=float)
        follows = ("the sform" if np.abs((itk - sform) @ corners).max() <= 0.01 else
                   "the qform" if np.abs((itk - qform) @ corners).max() <= 0.01 else
                   "neither alone (origin and direction from one, spacing from pixdim)")
        return (f"{self.name}: its qform and sform place the image up to {apart:.3g} mm apart; it is segmented and "
                f"written as ITK reads it, which follows {follows}")

    def close(self) -> None:
        """Remove the file's own link folder, if it made one."""
        if self._own is not None:
            self._own.cleanup()
            self._own = None


def read_image(path: str | Path, max_voxels: int | None = DEFAULT_MAX_VOXELS, dimensions: Sequence[int] = (3,),
               workdir: str | Path | None = None, name=None) -> Image:
    """Open, check and read an image file (see the module's docstring); CaseError naming the file for anything
    refused."""
    opened = ImageFile(path, workdir, name)
    try:
        return opened.check(max_voxels, dimensions).read()
    finally:
        opened.close()
