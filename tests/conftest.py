import os

# The Triton interpreter must be chosen before triton is imported anywhere, so kernels run on CPU CI.
os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
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


def write_amazon_copy(folder: Path, titles: bool, attributes: bool) -> Path:
    """A small Amazon 5-core-style folder (P5 files): 120 users over 40 items in 8 attribute groups;
    item2attributes.json and titles.tsv only when asked (the optional files a category may lack)."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    group = np.arange(1, 41) % 8
    lines = []
    for user in range(1, 121):
        start = rng.integers(0, 8)
        items = [int(i) for i in rng.choice(np.flatnonzero(group == start) + 1, size=5, replace=False)]
        lines.append(" ".join(map(str, [user, *items, int(rng.integers(1, 41))])))
    (folder / "sequential.txt").write_text("\n".join(lines) + "\n")
    if attributes:
        (folder / "item2attributes.json").write_text(json.dumps(
            {str(i): [int(group[i - 1]) + 1, 20 + int(rng.integers(0, 3))] for i in range(1, 41)}))
    if titles:
        (folder / "titles.tsv").write_text("item_id\tasin\ttitle\n" + "".join(
            f"{i}\tA{i}\tbrand{group[i - 1]} line{i % 3} cream\n" for i in range(1, 41)))
    return folder


@pytest.fixture
def amazon_copy():
    """`write_amazon_copy`, for tests that build Amazon category copies with and without optional files."""
    return write_amazon_copy
