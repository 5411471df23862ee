import os

# The Triton interpreter must be chosen before triton is imported anywhere, so kernels run on CPU CI.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir() -> Path:
    return Path(os.environ.get("GENRET_DATA_DIR", SHARED_DATA))


@pytest.fixture
def shared_data() -> Path:
    """The real data sets (../shared/data or $GENRET_DATA_DIR); skips the test when absent."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set GENRET_DATA_DIR or place ../shared beside the checkout)")
    return path
