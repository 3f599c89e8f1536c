import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIREX_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "tirex_reference_small"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    return FIXTURE
