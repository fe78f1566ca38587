"""The HU window: golden values by hand, the same numbers for arrays and tensors."""

import numpy as np
import pytest
import tensorflow as tf

from vfrac.data.window import BONE_WINDOW, grey, window_unit

HU = np.array([-1000.0, -500.0, 400.0, 850.0, 1300.0, 3000.0], dtype=np.float32)
# level 400, width 1800: 0 at -500 HU, 1 at 1300 HU; (850 + 500) / 1800 = 0.75
EXPECTED = np.array([0.0, 0.0, 0.5, 0.75, 1.0, 1.0])


def test_the_bone_window_maps_known_hu_to_known_levels():
    assert BONE_WINDOW == (400.0, 1800.0)
    np.testing.assert_allclose(window_unit(HU), EXPECTED, atol=1e-7)
    np.testing.assert_array_equal(grey(HU), [0, 0, 128, 191, 255, 255])  # 127.5 and 191.25 rounded


def test_tensors_get_the_same_numbers_as_arrays():
    tensor = window_unit(tf.constant(HU), BONE_WINDOW, clip=tf.clip_by_value)
    np.testing.assert_allclose(tensor.numpy(), EXPECTED, atol=1e-7)


def test_another_window_moves_the_levels():
    np.testing.assert_allclose(window_unit(np.array([0.0, 40.0, 240.0]), (40.0, 400.0)), [0.4, 0.5, 1.0])


@pytest.mark.parametrize("width", [0.0, -10.0])
def test_a_window_without_width_is_refused(width):
    with pytest.raises(ValueError, match="window width must be > 0"):
        window_unit(HU, (400.0, width))
