"""Packaging for stunet. ``pip install .`` (or ``-e .``) installs the library, its console scripts, the nnU-Net
trainers (as ``stunet.nnunet_plugins``), the pretrained model configs, and a one-line ``stunet-nnunet.pth`` that points
nnU-Net's ``nnUNet_extTrainer`` variable at the trainers, so ``nnUNetv2_train -tr STUNetTrainer_*`` finds them."""
import os
import re

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

# Run by Python's site module at start-up. It must not import stunet (that would import torch in every interpreter):
# it locates the installed trainer folder with find_spec and appends it to nnUNet_extTrainer if it is not there yet.
PTH_NAME = "stunet-nnunet.pth"
PTH_LINE = (
    "import os, importlib.util as u; s = u.find_spec('stunet'); d = s and s.origin and os.path.dirname(s.origin); "
    "p = d and next((c for c in (os.path.join(d, 'nnunet_plugins'), os.path.join(os.path.dirname(d), "
    "'nnunet_plugins')) if os.path.isdir(c)), None); v = os.environ.get('nnUNet_extTrainer', ''); "
    "p and p not in v.split(os.pathsep) and os.environ.__setitem__('nnUNet_extTrainer', v + os.pathsep + p if v else p)"
    "\n")


def write_pth(folder):
    with open(os.path.join(folder, PTH_NAME), "w") as f:
        f.write(PTH_LINE)


class BuildWithPth(build_py):
    """Writes the start-up line into the root of the built tree, so wheels install it into site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            write_pth(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        extra = [] if self.editable_mode else [os.path.join(self.build_lib, PTH_NAME)]
        return super().get_outputs(include_bytecode) + extra


class EditableWithPth(editable_wheel):
    """``pip install -e .``: the same line goes into the root of the editable wheel (setuptools >= 64)."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        write_pth(installation_dir)


setup(
    name="stunet",
    version=re.search(r'__version__ = "([^"]+)"', open("stunet/version.py").read())[1],
    description="Scalable residual U-Nets (STU-Net, 14M-1.4B parameters) as an nnU-Net v2 plugin",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["stunet", "stunet.models", "stunet.weights", "stunet.clinical", "stunet.evaluation", "stunet.nnunet",
              "stunet.deploy", "stunet.prediction", "stunet.cli", "stunet.io", "stunet.label_maps", "stunet.nnunet_plugins",
              "stunet.pretrained_configs"],
    package_dir={"stunet.nnunet_plugins": "nnunet_plugins", "stunet.pretrained_configs": "pretrained_configs"},
    package_data={"stunet.nnunet": ["*.json"], "stunet.pretrained_configs": ["*.json"], "stunet.label_maps": ["*.json"]},
    # Every third-party package that stunet imports, and nothing else (tests/test_dependencies.py checks both ways):
    # nnunetv2 brings most of them too, but stunet imports them itself. An extra's packages are imported only inside
    # functions that first call the module's require(), which names the extra in a one-line ImportError.
    install_requires=[
        "torch>=2.1",
        "nnunetv2>=2.8,<2.9",
        "acvl-utils>=0.2.6",  # prediction: pad_nd_image, as nnU-Net pads
        "batchgenerators>=0.25",  # stunet-train
        "batchgeneratorsv2>=0.3.2",  # the trainers' augmentation
        "huggingface_hub>=2.4,<3",  # released weights on demand; its HTTP client and metadata calls (stunet.weights.hub)
        "httpx2",  # the download loop in stunet.weights.hub (what huggingface_hub 2 uses)
        "matplotlib",  # stunet-predict --preview (nnunetv2 requires it as well)
        "SimpleITK>=2.2",
        "nibabel>=5",
        "numpy",
        "pydicom>=2.4",  # DICOM input: every header checked before GDCM reads the pixels (stunet.clinical.dicom)
        "scikit-image",  # stunet-evaluate: the marching-cubes surface table (nnunetv2 requires it as well)
        "scipy",  # stunet-predict --qc: connected components (nnunetv2 requires it as well)
        "safetensors>=0.4",
        "tqdm",
    ],
    # surface-distance (DeepMind's, the implementation FLARE's evaluation uses) is the reference the tests compare
    # stunet-evaluate's surface metrics with; it is not needed at run time.
    extras_require={"test": ["pytest>=7", "highdicom>=0.22", "surface-distance>=0.1"],
                    "dicom": ["highdicom>=0.22"],  # DICOM-SEG output: stunet.clinical.dicom_seg.require()
                    # stunet-export, stunet-predict --backend onnxruntime/openvino: stunet.deploy.engines.require()
                    "deploy": ["onnx>=1.15", "onnxruntime>=1.17", "openvino>=2024.0"]},
    entry_points={"console_scripts": [
        "stunet-info=stunet.cli.info:main",
        "stunet-demo=stunet.cli.demo:main",
        "stunet-env=stunet.cli.env:main",
        "stunet-convert=stunet.cli.convert:main",
        "stunet-download=stunet.cli.download:main",
        "stunet-plans=stunet.cli.plans:main",
        "stunet-predict=stunet.cli.predict:main",
        "stunet-export=stunet.cli.export:main",
        "stunet-train=stunet.cli.train:main",
        "stunet-totalseg=stunet.cli.totalseg:main",
        "stunet-evaluate=stunet.cli.evaluate:main",
        "stunet-report=stunet.cli.report:main",
    ]},
    cmdclass={"build_py": BuildWithPth, "editable_wheel": EditableWithPth},
)
