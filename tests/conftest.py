import os
from pathlib import Path

import pytest

# ../shared beside the checkout holds the read-only reference material; STUNET_SHARED may point elsewhere.
SHARED = Path(os.environ.get("STUNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


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
