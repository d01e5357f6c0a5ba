"""Crafted checkpoint files: each a member of one class of attack or damage that the safe reader must refuse with a
CheckpointError naming the file, quickly and without building what the file declares. Never unpickle these with
plain pickle or torch.load: some crash the interpreter (object-dtype arrays from raw bytes)."""
from __future__ import annotations

import codecs
import collections
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

_np_core = getattr(np, "_core", None) or np.core


class Reduce:
    """Pickles as ``func(*args)`` (then ``BUILD state`` when given) without being that object."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Storage:
    """A tensor storage reference with a declared element count (a persistent id in torch files)."""

    def __init__(self, numel: int, key: str = "0", kind=torch.FloatStorage):
        self.numel, self.key, self.kind = numel, key, kind


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def tensor(storage: Storage, size, stride=None) -> Reduce:
    stride = stride or tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
    return Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, tuple(size), tuple(stride), False,
                                                    collections.OrderedDict()))


def torch_zip(path: Path, obj, members: dict[str, bytes] | None = None, deflate: set[str] = frozenset()) -> Path:
    """A torch zip archive around ``obj`` pickled with storage references, holding ``members`` (key -> bytes)."""
    data = io.BytesIO()
    _TorchPickler(data, protocol=2).dump(obj)
    name = path.stem
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/data.pkl", data.getvalue())
        archive.writestr(f"{name}/byteorder", b"little")
        for key, content in (members or {}).items():
            method = zipfile.ZIP_DEFLATED if key in deflate else zipfile.ZIP_STORED
            archive.writestr(f"{name}/data/{key}", content, compress_type=method)
        archive.writestr(f"{name}/version", b"3\n")
    return path


def legacy_torch(path: Path, obj, storages: dict[str, bytes]) -> Path:
    """A legacy (non-zip) torch file: magic, protocol, system info, ``obj``, keys, then each storage's bytes."""
    out = io.BytesIO()
    for header in (0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    _TorchPickler(out, protocol=2).dump(obj)
    pickle.dump(sorted(storages), out, protocol=2)
    for key in sorted(storages):
        out.write(len(storages[key]).to_bytes(8, "little") + storages[key])
    path.write_bytes(out.getvalue())
    return path


def weights(n: int = 4) -> dict:
    return {"conv.weight": tensor(Storage(n), (n,))}


def object_array(raw: bytes = b"\x41" * 16) -> Reduce:
    """A numpy object array rebuilt from raw bytes: numpy takes them for object pointers (a segfault)."""
    return Reduce(_np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                  (1, (2,), np.dtype("O"), False, raw))


def object_field_array(raw: bytes = b"\x41" * 8) -> Reduce:
    """A structured array with an object field whose dtype state drops the list-pickle flag: numpy rebuilds it from
    raw bytes, taking them for a pointer. Unpickled without the guard, this kills the interpreter (SIGSEGV)."""
    dtype = Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
    return Reduce(_np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), dtype, False, raw))


def flagged_float_array() -> Reduce:
    """A float64 dtype whose pickled state claims it holds Python objects (flags 63)."""
    dtype = Reduce(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63))
    return Reduce(_np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), dtype, False, b"\0" * 16))


def reference_bomb(levels: int = 60) -> list:
    """``b = [a, a]; c = [b, b]; ...``: a kilobyte pickle that expands to 2**levels nodes when walked."""
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


def raw_pickle(body: bytes, protocol: int = 4) -> bytes:
    return bytes([0x80, protocol]) + body + b"."


def v1_companion(folder: Path, name: str, content_bytes: bytes) -> Path:
    """A released-layout v1 .model with a crafted .model.pkl beside it."""
    path = torch_zip(folder / f"{name}.model", {"state_dict": weights(), "epoch": 1}, {"0": b"\0" * 16})
    Path(f"{path}.pkl").write_bytes(content_bytes)
    return path


def corpus(folder: Path) -> dict[str, Path]:
    """Every crafted checkpoint by name; each must be refused."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {"0": b"\0" * 16}
    v2 = lambda plans: {"network_weights": weights(), "trainer_name": "STUNetTrainer_small",  # noqa: E731
                        "init_args": {"plans": plans, "configuration": "3d_fullres", "dataset_json": {}}}
    files = {
        "object_array_pkl": v1_companion(folder, "object_pkl", pickle.dumps({"plans": object_array()}, protocol=2)),
        "object_array_pth": torch_zip(folder / "object.pth", v2({"a": object_array()}), good),
        "object_field_pkl": v1_companion(folder, "object_field", pickle.dumps({"plans": object_field_array()},
                                                                              protocol=2)),
        "object_field_pth": torch_zip(folder / "object_field.pth", v2({"a": object_field_array()}), good),
        "object_dtype_class": torch_zip(folder / "objclass.pth", v2({"a": np.dtypes.ObjectDType}), good),
        "void_dtype": torch_zip(folder / "void.pth", v2({"a": np.zeros(2, dtype="V8")}), good),
        "flagged_dtype": v1_companion(folder, "flags", pickle.dumps({"plans": flagged_float_array()}, protocol=2)),
        "reference_bomb_pth": torch_zip(folder / "bomb.pth", v2(reference_bomb()), good),
        "reference_bomb_pkl": v1_companion(folder, "bomb_pkl", pickle.dumps({"plans": reference_bomb()})),
        "reference_bomb_unused": torch_zip(folder / "bomb_unused.pth", {**v2({}), "logging": reference_bomb()}, good),
        "codec": torch_zip(folder / "codec.pth", v2({"a": Reduce(codecs.encode, ("x" * 50, "punycode"))}), good),
        "codec_pkl": v1_companion(folder, "codec_pkl", pickle.dumps({"plans": Reduce(codecs.encode, ("x", "idna"))},
                                                                    protocol=2)),
        "huge_array_shape": v1_companion(folder, "huge_array", pickle.dumps({"plans": Reduce(
            _np_core.multiarray._reconstruct, (np.ndarray, (100_000, 100_000), b"b"))}, protocol=2)),
        "array_bigger_than_bytes": v1_companion(folder, "short_array", pickle.dumps({"plans": Reduce(
            _np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
            (1, (1 << 30,), np.dtype("f8"), False, b"\0" * 8))}, protocol=2)),
        "huge_string_dtype": v1_companion(folder, "huge_dtype", pickle.dumps({"plans": Reduce(
            np.dtype, ("U2000000000", False, True))}, protocol=2)),
        "declared_bytes": v1_companion(folder, "declared",
                                       raw_pickle(b"\x8e" + (1 << 40).to_bytes(8, "little") + b"ab")),
        "memo_index": v1_companion(folder, "memo", raw_pickle(b"Nr" + (1 << 31).to_bytes(4, "little"), 2)),
        "big_int": v1_companion(folder, "bigint", raw_pickle(b"L" + b"9" * 100_000 + b"L\n", 2)),
        "storage_numel": torch_zip(folder / "numel.pth", {"state_dict": {"w": tensor(Storage(1 << 40), (1 << 40,))}},
                                   good),
        "storage_missing": torch_zip(folder / "missing.pth", {"state_dict": weights()}, {}),
        "view_outside_storage": torch_zip(folder / "view.pth", {"state_dict": {
            "w": tensor(Storage(4), (1000, 1000, 1000), (0, 0, 0))}}, good),
        "legacy_storage_numel": legacy_torch(folder / "legacy.model", {"state_dict": {
            "w": tensor(Storage(1 << 34), (4,))}}, {"0": b"\0" * 16}),
        "zip_bomb": torch_zip(folder / "zipbomb.pth", {"state_dict": {"w": tensor(Storage(50 << 18), (50 << 18,))}},
                              {"0": bytes(50 << 20)}, deflate={"0"}),
        "non_str_key": torch_zip(folder / "intkey.pth", {"state_dict": {1: tensor(Storage(4), (4,))}}, good),
        "non_tensor_value": torch_zip(folder / "notensor.pth", {"network_weights": {"w": [1, 2]}}, good),
        "plans_not_dict": torch_zip(folder / "plans_list.pth", v2([1, 2, 3]), good),
        "trainer_not_text": torch_zip(folder / "trainer.pth", {**v2({}), "trainer_name": ["x"] * 3}, good),
        "deep_nesting": v1_companion(folder, "deep", raw_pickle(b"]" * 5000 + b"a" * 4999, 2)),
        "os_system": torch_zip(folder / "system.pth", {"state_dict": weights(), "x": Reduce(print, ("hi",))}, good),
        "not_a_pickle": folder / "text.pth",
        "plain_pickle": folder / "plain.model",
    }
    files["not_a_pickle"].write_text("hello")
    for name, header, data in (
            ("safetensors_shape", {"w": {"dtype": "F32", "shape": [10 ** 9], "data_offsets": [0, 4]}}, b"\0" * 4),
            ("safetensors_offsets", {"w": {"dtype": "F32", "shape": [10 ** 9], "data_offsets": [0, 4 * 10 ** 9]}},
             b"\0" * 4),
            ("safetensors_header", None, b"{}"),
            ("safetensors_labels", {"__metadata__": {"labels": "[" * 100_000}, "w": {
                "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)):
        encoded = json.dumps(header).encode() if header is not None else b""
        length = len(encoded) if header is not None else 1 << 62
        files[name] = folder / f"{name}.safetensors"
        files[name].write_bytes(struct.pack("<Q", length) + encoded + data)
    files["plain_pickle"].write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    good_archive = torch_zip(folder / "good.pth", {"state_dict": weights()}, good)
    data = good_archive.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    files["truncated_zip"] = folder / "truncated.pth"
    legacy = legacy_torch(folder / "legacy_ok.model", {"state_dict": weights()}, good).read_bytes()
    (folder / "legacy_truncated.model").write_bytes(legacy[:-10])
    files["truncated_legacy"] = folder / "legacy_truncated.model"
    return files


# -- images --------------------------------------------------------------------------------------------------------
def _image(shape=(12, 16, 20), spacing=(1.0, 1.0, 2.0), seed: int = 0):
    import SimpleITK as sitk

    array = np.random.default_rng(seed).normal(0, 100, shape).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _write(image, path: Path, compress: bool = False) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), compress)
    return path


def _cut(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _nifti_with(path: Path, source: Path, **fields) -> Path:
    """A copy of an uncompressed NIfTI-1 file with header fields replaced (pixdim=(x, y, z), dim=(n, x, y, z))."""
    import struct

    data = bytearray(source.read_bytes())
    if "pixdim" in fields:
        for i, value in enumerate(fields["pixdim"]):
            struct.pack_into("<f", data, 80 + 4 * i, value)
    if "dim" in fields:
        for i, value in enumerate(fields["dim"]):
            struct.pack_into("<h", data, 40 + 2 * i, value)
    path.write_bytes(bytes(data))
    return path


def image_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken or careless image files (name -> (file, what the message must say)); each must be refused before it is
    read in full. File names end in _0000 so that a folder of them is a set of single-channel cases."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    image = _image()
    plain = _write(image, folder / "source.nii")
    cases = {}

    def add(name, path, expected):
        cases[name] = (path, expected)

    header = plain.read_bytes()[:352]
    (folder / "header_only_0000.nii").write_bytes(header)
    add("header_only_nii", folder / "header_only_0000.nii", "holds none (a header only)")
    (folder / "header_only_gz_0000.nii.gz").write_bytes(gzip.compress(header))
    add("header_only_nii_gz", folder / "header_only_gz_0000.nii.gz", "holds none (a header only)")
    add("truncated_nii", _cut(_write(image, folder / "cut_nii_0000.nii")), "truncated file")
    add("truncated_nii_gz", _cut(_write(image, folder / "cut_gz_0000.nii.gz", True)), "truncated gzip file")
    add("truncated_nrrd", _cut(_write(image, folder / "cut_nrrd_0000.nrrd")), "truncated file")
    add("truncated_nrrd_gzip", _cut(_write(image, folder / "cut_nrrdgz_0000.nrrd", True)), "truncated gzip file")
    add("truncated_mha", _cut(_write(image, folder / "cut_mha_0000.mha")), "truncated file")
    add("truncated_mha_zlib", _cut(_write(image, folder / "cut_mhaz_0000.mha", True)), "truncated compressed data")
    mhd = _write(image, folder / "cut_mhd_0000.mhd")
    _cut(folder / "cut_mhd_0000.raw", 0.5)
    add("truncated_mhd_data", mhd, "truncated file")
    missing = _write(image, folder / "nodata_mhd_0000.mhd")
    (folder / "nodata_mhd_0000.raw").unlink()
    add("mhd_without_data_file", missing, "does not exist")
    add("zero_spacing", _nifti_with(folder / "zero_0000.nii", plain, pixdim=(0.0, 1.0, 2.0)), "not finite and positive")
    add("nan_spacing", _nifti_with(folder / "nan_0000.nii", plain, pixdim=(float("nan"), 1.0, 2.0)),
        "not finite and positive")
    add("inf_spacing", _nifti_with(folder / "inf_0000.nii", plain, pixdim=(1.0, float("inf"), 2.0)),
        "not finite and positive")
    add("absurd_spacing", _write(_image((20, 20, 20), (45.0, 45.0, 45.0)), folder / "absurd_0000.nii.gz", True),
        "become 600 x 600 x 600 = 216,000,000 voxels")
    add("huge_declared", _nifti_with(folder / "huge_0000.nii", plain, dim=(3, 30000, 30000, 30000)),
        "over the budget")
    return cases


def synthetic_volume(seed: int = 1, shape=(14, 40, 36)) -> np.ndarray:
    """One channel of a synthetic case (stunet.nnunet.synthetic.make_case), float32."""
    from stunet.nnunet.synthetic import make_case

    return make_case(np.random.default_rng(seed), shape, 1)[0][0].astype(np.float32)


AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def unreadable_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Images the model cannot read or whose spacing is implausible (name -> (file, what the message must say))."""
    import nibabel as nib
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = synthetic_volume()
    nib.save(nib.Nifti1Image(volume.T.astype(np.complex64), AFFINE), folder / "complex_0000.nii")
    rgb = np.zeros(volume.T.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), folder / "rgb_0000.nii.gz")
    sitk.WriteImage(sitk.Compose([sitk.GetImageFromArray(volume)] * 2), str(folder / "vector_0000.mha"))
    nib.save(nib.Nifti1Image(volume.T, np.diag([1e-30, 1e-30, 1e-30, 1.0])), folder / "tiny_0000.nii.gz")
    flat = np.zeros((1, 24, 24), np.float32)
    flat[0, 5:9, 5:9] = 100
    image = sitk.GetImageFromArray(flat)
    image.SetSpacing((1e5, 1e5, 1e5))
    sitk.WriteImage(image, str(folder / "flat_0000.nii.gz"))
    return {"complex": (folder / "complex_0000.nii", "complex-valued voxels"),
            "rgb": (folder / "rgb_0000.nii.gz", "3 components per voxel"),
            "vector": (folder / "vector_0000.mha", "2 components per voxel"),
            "tiny": (folder / "tiny_0000.nii.gz", "outside the plausible 0.01-50 mm"),
            "flat": (folder / "flat_0000.nii.gz", "outside the plausible 0.01-50 mm")}


BIG_SPACING_MM = 4.0  # careless_images' "over_budget" image: 10 x 24 x 20 voxels of 4 mm, 91,000 voxels at 1.5 mm
SMALL_BUDGET = 60_000  # voxels: over_budget's limit, above what a 14 x 40 x 36 good case pads to (32,768)


def careless_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """Images ITK reads but no model should take (name -> (file, what the message must say)): no finite voxel, 4D,
    RGB, and "over_budget", a valid image over a budget of SMALL_BUDGET voxels."""
    import nibabel as nib
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = synthetic_volume(5, (10, 24, 20))
    for name, value in (("all_nan", np.nan), ("all_inf", np.inf)):
        nib.save(nib.Nifti1Image(np.full(volume.shape[::-1], value, np.float32), AFFINE),
                 folder / f"{name}_0000.nii.gz")
    four = np.stack([volume, volume], -1).transpose(2, 1, 0, 3)
    nib.save(nib.Nifti1Image(four, AFFINE), folder / "four_d_0000.nii.gz")
    rgb = np.zeros(volume.shape[::-1], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = (volume.transpose(2, 1, 0) > 0) * 200
    nib.save(nib.Nifti1Image(rgb, AFFINE), folder / "red_0000.nii.gz")
    big = sitk.GetImageFromArray(volume)
    big.SetSpacing((BIG_SPACING_MM,) * 3)
    sitk.WriteImage(big, str(folder / "over_budget_0000.nii.gz"))
    return {"all_nan": (folder / "all_nan_0000.nii.gz", "no finite voxel"),  # ITK alone would read it as zeros
            "all_inf": (folder / "all_inf_0000.nii.gz", "no finite voxel"),
            "four_d": (folder / "four_d_0000.nii.gz", "a 4D image"),
            "red": (folder / "red_0000.nii.gz", "3 components per voxel"),
            "over_budget": (folder / "over_budget_0000.nii.gz", "over the budget")}


def damaged_files(folder: Path, good_case: Path) -> dict[str, tuple[Path, str]]:
    """Files made from a good .nii.gz case (name -> (file, what the message must say)): cut in half, a gzip of text,
    plain text, two volumes joined into 4D, and an oblique image of NaN written by ITK."""
    import gzip

    import SimpleITK as sitk

    from predict_helpers import write_image

    folder.mkdir(parents=True, exist_ok=True)
    data = good_case.read_bytes()
    (folder / "truncated_0000.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "text_0000.nii.gz").write_bytes(gzip.compress(b"this is not an image"))
    (folder / "plain_0000.nii.gz").write_text("not even gzip")
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(good_case))] * 2), str(folder / "fourd_0000.nii.gz"))
    write_image(folder / "nan_voxels_0000.nii.gz", np.full((10, 20, 20), np.nan, np.float32))
    return {"truncated": (folder / "truncated_0000.nii.gz", "truncated gzip"),
            "text": (folder / "text_0000.nii.gz", "Unable to determine ImageIO reader"),
            "plain": (folder / "plain_0000.nii.gz", ""),
            "fourd": (folder / "fourd_0000.nii.gz", "4D image"),
            "nan_voxels": (folder / "nan_voxels_0000.nii.gz", "no finite voxel")}


def escaping_headers(folder: Path, secret: Path) -> dict[str, tuple[Path, str]]:
    """NRRD and MetaImage headers whose data file lies outside their folder (``secret``, by a relative path, an
    absolute one and a list), which would read another file (name -> (file, what the message must say))."""
    folder.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(bytes(24 * 24 * 8 * 2))
    nrrd = "NRRD0004\ntype: short\ndimension: 3\nsizes: 24 24 8\nspacings: 1 1 1\nencoding: raw\n"
    relative = f"{'../' * (len(folder.relative_to(secret.parent).parts))}{secret.name}"
    headers = {"nrrd_0000.nrrd": f"{nrrd}data file: {relative}\n\n",
               "absolute_0000.nrrd": f"{nrrd}data file: {secret}\n\n",
               "list_0000.nrrd": f"{nrrd}data file: LIST\nok.raw\n{relative}\n",
               "meta_0000.mhd": "ObjectType = Image\nNDims = 3\nDimSize = 24 24 8\nElementSpacing = 1 1 1\n"
                                f"ElementType = MET_SHORT\nElementDataFile = {relative}\n"}
    cases = {}
    for name, text in headers.items():
        (folder / name).write_text(text)
        cases[name.split("_0000")[0]] = (folder / name, "outside the header's folder")
    return cases
