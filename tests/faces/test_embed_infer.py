import pytest
import torch

from cnnlab.faces.train import infer_embeddings
from cnnlab.metrics import pair_distances
from cnnlab.models.siamese import build_siamese
from tests.conftest import ACROSS_PATHS

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _model(normalize=True):
    torch.manual_seed(0)
    return build_siamese("tiny", "none", embedding_dim=8, normalize=normalize)


def test_embedding_is_deterministic_and_batch_independent():
    model = _model()
    model.train()  # infer_embeddings switches to eval mode itself
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    a = infer_embeddings(model, x, device=torch.device("cpu"), batch_size=3)
    b = infer_embeddings(model, x, device=torch.device("cpu"), batch_size=10)
    assert not model.training
    assert a.shape == (10, 8) and torch.allclose(a, b, atol=ACROSS_PATHS)
    with torch.no_grad():
        assert torch.allclose(a, model(x), atol=ACROSS_PATHS)  # the same as the model's own forward
    assert torch.allclose(a.norm(dim=1), torch.ones(10), atol=1e-5)


def test_features_come_from_the_same_pass():
    model = _model(normalize=False)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    emb, feats = infer_embeddings(model, x, device=torch.device("cpu"), features=True)
    assert feats.shape == (4, 128)
    with torch.no_grad():
        assert torch.allclose(emb, model.head(feats), atol=1e-6)


def test_pair_distances():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    d = pair_distances(emb, torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert torch.allclose(d, torch.tensor([5.0, (4.0 + 16.0) ** 0.5]))
