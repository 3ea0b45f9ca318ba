import numpy as np
import pytest
import torch

from pipeline.autoencoder import (
    AutoencoderConfig,
    KernelAutoencoder,
    cosine_loss,
    decode_sweep,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from pipeline.preprocess import centre_and_normalise


def test_cosine_loss_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosines 1 and 0
    assert cosine_loss(x, y).item() == pytest.approx(0.5)


def test_the_code_is_one_number_in_0_1():
    model = KernelAutoencoder(25)
    code = model.encode(torch.randn(7, 25))
    assert code.shape == (7, 1) and bool(((code > 0) & (code < 1)).all())


def test_same_input_and_seed_give_the_same_model():
    kernels, _ = centre_and_normalise(np.random.default_rng(0).normal(size=(600, 9)))
    config = AutoencoderConfig(seed=3, min_steps=50, epochs=2)
    a, _ = train_autoencoder(kernels, config)
    b, _ = train_autoencoder(kernels, config)
    c, _ = train_autoencoder(kernels, AutoencoderConfig(seed=4, min_steps=50, epochs=2))
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     c.state_dict().values()))


def test_save_and_load_round_trip(tmp_path):
    model = KernelAutoencoder(9)
    path = save_autoencoder(model, tmp_path / "k3.safetensors", extra={"kernel_size": 3})
    loaded, meta = load_autoencoder(path)
    assert meta["kernel_size"] == 3 and meta["dim"] == 9
    _, a = decode_sweep(model, 11)
    _, b = decode_sweep(loaded, 11)
    np.testing.assert_array_equal(a, b)

