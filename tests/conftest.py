from pathlib import Path

import pytest

from stunet import settings

# ../shared beside the checkout holds the read-only reference material; STUNET_SHARED may point elsewhere.
SHARED = Path(settings.shared() or Path(__file__).resolve().parents[2] / "shared")


def shared_file(relative: str) -> Path:
    """A file under ../shared, or a skip (with the reason) when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"reference material {path} is absent (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def shared():
    """``shared("reference/x.json")``: the path of a ../shared file, or a skip when it is absent."""
    return shared_file


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """A synthetic dataset (10 training, 2 held-out cases of 24×32×32 voxels) planned and preprocessed by nnU-Net for
    2d and 3d_fullres: ``(root, dataset folder, environment for nnU-Net's commands)``."""
    from nnunet_helpers import nnunet_env, run
    from stunet.nnunet.synthetic import write_dataset

    root = tmp_path_factory.mktemp("nnunet")
    folder = write_dataset(root / "raw", dataset_id=990, num_train=10, num_test=2, shape=(24, 32, 32))
    env = nnunet_env(root)
    run(["nnUNetv2_plan_and_preprocess", "-d", "990", "-c", "2d", "3d_fullres", "-np", "1", "1", "-npfp", "1"], env)
    return root, folder, env


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """predict_helpers.make_model_folder's model (one channel, five labels, seed 0), made once for the session. Tests
    read it only; one that changes a model folder copies it first."""
    from predict_helpers import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("model") / "model")
