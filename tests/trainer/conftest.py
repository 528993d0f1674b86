import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Autouse for every trainer test: torch on one thread. Small convs gain nothing from 2 threads,
    and OpenMP spinning makes them ~10x slower when other processes share the 2 cores; the caller's
    setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
