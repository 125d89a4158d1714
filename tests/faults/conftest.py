"""Fault tests reuse the end-to-end fixtures (the CAD subscriber on the real broker)."""

from tests.e2e.conftest import cad_subscriber_factory  # noqa: F401 - pytest fixture
