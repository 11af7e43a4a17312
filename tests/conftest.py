"""Suite-wide settings: one intra-op thread per test worker.

``make test`` runs two xdist workers on two cores; with torch's default of one thread per core, OpenMP
spin-waiting between the workers turns millisecond steps into seconds.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    """Every test leaves autograd on, as it found it: a test that leaves it off (a ``no_grad`` held open
    across a generator's ``yield``) made dozens of unrelated training tests fail later in the same worker."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left torch's grad mode disabled")
