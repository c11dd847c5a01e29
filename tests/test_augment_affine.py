"""The affine augmentation against exact geometric identities."""
import numpy as np
import pytest

from netdsl.core.errors import NetdslError
from netdsl.data.augment import affine_warp, augment_batch, parse_mode
from netdsl.lang.train_config import TrainConfig


def batch(n=3, h=7, w=9, c=2, seed=0):
    return np.random.default_rng(seed).random((n, h, w, c)).astype(np.float32)


def test_identity_parameters_return_the_image():
    x = batch()
    z = np.zeros(len(x))
    np.testing.assert_allclose(affine_warp(x, z, np.ones(len(x)), z, z), x, atol=1e-6)


def test_half_turn_is_a_double_mirror():
    x = batch()
    n = len(x)
    out = affine_warp(x, np.full(n, np.pi), np.ones(n), np.zeros(n), np.zeros(n))
    np.testing.assert_allclose(out, x[:, ::-1, ::-1], atol=1e-5)


def test_integer_shift_moves_content_and_repeats_the_border():
    x = batch(n=1)
    out = affine_warp(x, np.zeros(1), np.ones(1), np.array([2.0]), np.array([0.0]))
    np.testing.assert_allclose(out[:, 2:], x[:, :-2], atol=1e-6)        # moved down by 2 rows
    np.testing.assert_allclose(out[:, :2], np.repeat(x[:, :1], 2, axis=1), atol=1e-6)


def test_scale_two_magnifies_about_the_centre():
    x = batch(n=1, h=9, w=9)
    out = affine_warp(x, np.zeros(1), np.full(1, 2.0), np.zeros(1), np.zeros(1))
    assert np.allclose(out[0, 4, 4], x[0, 4, 4])                          # centre stays
    np.testing.assert_allclose(out[0, 6, 4], x[0, 5, 4], atol=1e-6)       # 2 px out = 1 px in


def test_modes_combine_and_bad_modes_are_errors():
    assert parse_mode("affine+crop") == {"affine", "crop"}
    assert parse_mode("none") == set()
    with pytest.raises(NetdslError, match="affin"):
        parse_mode("afine")
    with pytest.raises(NetdslError):
        TrainConfig(augment="crop+rotate")
    x = batch()
    out = augment_batch(x, "affine+crop", np.random.default_rng(1))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert np.array_equal(x, batch())                                     # input untouched
