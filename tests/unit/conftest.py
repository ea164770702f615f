"""Unit tests run without root: no network namespace, no nft, no journald.

The fixtures below shadow the root-only ones of tests/conftest.py for this
directory, so a unit test that asks for one fails at once and says where it
belongs; tests on the real kernel, journald or a namespace live in
tests/integration. `tests/run.sh` also runs this directory as an unprivileged
user, which catches a unit test that reaches root without a fixture.
"""

from __future__ import annotations

import pytest

_WHERE = "unit tests run without root; a test on the real kernel belongs in tests/integration"


@pytest.fixture
def private_netns() -> None:
    """Refused here (see the module docstring)."""
    pytest.fail(f"private_netns: {_WHERE}")


@pytest.fixture
def lab() -> None:
    """Refused here (see the module docstring)."""
    pytest.fail(f"lab: {_WHERE}")


@pytest.fixture
def journald() -> None:
    """Refused here (see the module docstring)."""
    pytest.fail(f"journald: {_WHERE}")
