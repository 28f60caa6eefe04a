import pytest

from kvp_integration_helpers import FakeDecodeWrapper


@pytest.fixture
def fake_wrapper_cls():
    FakeDecodeWrapper.instances.clear()
    return FakeDecodeWrapper
