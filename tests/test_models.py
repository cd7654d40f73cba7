import pytest
import torch

from fedinv.errors import ConfigError
from fedinv.models import MODELS, build_model

SHAPES = [(1, 28), (3, 32), (3, 16)]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels,size", SHAPES)
def test_forward_and_backward_at_image_size(name, channels, size):
    if size < MODELS[name].min_image_size:
        with pytest.raises(ConfigError, match="at least"):
            build_model(name, channels, 7, size)
        return
    torch.manual_seed(0)
    model = build_model(name, channels, 7, size)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "inversion needs BatchNorm"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19'; known: bncnn, cnn1, cnn2, lenet5"):
        build_model("resnet19", 3, 10, 32)


def test_paper_cnn_shapes_match_feddistill():
    # CNN1 / CNN2 flatten to 1024 / 2048 features at 32 px (feddistill.txt IV-B)
    linear = [m for m in build_model("cnn1", 3, 10, 32).modules() if isinstance(m, torch.nn.Linear)]
    assert (linear[0].in_features, linear[0].out_features) == (1024, 64)
    linear = [m for m in build_model("cnn2", 3, 10, 32).modules() if isinstance(m, torch.nn.Linear)]
    assert linear[0].in_features == 2048
