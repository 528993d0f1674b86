import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions on a loaded 2-core box are ~10x slower with two torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
