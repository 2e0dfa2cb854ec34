import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
