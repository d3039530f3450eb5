"""Where the shared DexGraspNet sample lives, and a marker for tests that need it."""

from pathlib import Path

import pytest

# ../shared beside the repository checkout (see shared/data/dexgraspnet/README.md).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dexgraspnet"

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "grasps").is_dir(),
    reason="../shared/data/dexgraspnet not found beside the repository",
)
