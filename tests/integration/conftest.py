import pytest

from kvp_integration_helpers import FakeDecodeWrapper


@pytest.fixture
def fake_wrapper_cls():
    FakeDecodeWrapper.instances.clear()
    return FakeDecodeWrapper


# Model folders for the GPU end-to-end tests: session-scoped, so every test file of one pytest run shares them
# (and gpu_engine_runs' cache of Engine results, which is keyed by the folder's path).


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The built-in tiny Llama with seeded well-scaled random weights (see test_gpu_engine.py)."""
    pytest.importorskip("sglang")
    from kvprefetch.integration.model_folder import write_model_folder

    path = str(tmp_path_factory.mktemp("models") / "tiny")
    write_model_folder(path, "tiny", weights="random")
    return path


@pytest.fixture(scope="session")
def llama8b_4l_dummy(tmp_path_factory):
    pytest.importorskip("sglang")
    from kvprefetch.integration.model_folder import write_model_folder

    path = str(tmp_path_factory.mktemp("models") / "llama8b-4l")
    write_model_folder(path, "llama-3.1-8b", num_layers=4)
    return path
