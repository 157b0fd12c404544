import numpy as np
import pytest
import torch

from deploybench.zoo import UnknownModelError, all_specs, get_spec
from deploybench.zoo.spec import torch_to_keras_weights


def test_zoo_declares_the_digits_models():
    assert {"digits-mlp", "digits-cnn"} <= set(all_specs())


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="digits-mlp"):
        get_spec("no-such-model")


def test_digits_cnn_is_a_real_convnet_with_50k_weights():
    spec = get_spec("digits-cnn")
    model = spec.build_torch()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    assert sum(p.numel() for p in model.parameters()) >= 50_000


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_twins_agree_on_seeded_weights(name):
    """Untrained twins, weights copied: equal outputs prove layouts and flatten order."""
    spec = get_spec(name)
    torch.manual_seed(1)
    torch_model = spec.build_torch().eval()
    keras_model = spec.build_keras()
    spec.copy_weights(torch_model, keras_model)
    x = np.random.default_rng(0).random((16, *spec.input_shape), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(keras_model(x).numpy(), expected, atol=1e-5)


def test_public_input_is_sklearn_pixels_over_16():
    from sklearn.datasets import load_digits

    split = get_spec("digits-cnn").data()
    assert split.x_test.shape[1:] == (8, 8, 1) and split.x_test.dtype == np.float32
    assert split.x_test.min() >= 0 and split.x_test.max() <= 1
    pixels = load_digits().data / 16.0
    # every held-out row is a real digit in sklearn's row-major order
    row = split.x_test[0].reshape(64)
    assert np.any(np.all(np.isclose(pixels, row), axis=1))


def test_conv_kernel_is_permuted_oihw_to_hwio():
    conv = torch.nn.Conv2d(2, 3, 3)
    kernel, bias = torch_to_keras_weights(conv)
    assert kernel.shape == (3, 3, 2, 3)
    assert kernel[1, 2, 0, 1] == conv.weight[1, 0, 1, 2].item()
