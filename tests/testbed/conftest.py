"""The testbed's tensors are small ([B, K, d] with B ~ 1e3): on a shared 2-core CPU, torch's intra-op threads only
add contention (a 24k-element log took 8 ms with 2 threads and 0.05 ms with 1), so these tests run on one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
