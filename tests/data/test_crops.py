"""ROI squares and 3-slice stacks on small volumes whose answers are known."""

import numpy as np
import pytest

from vfrac.data.crops import AIR_HU, Box, crop_stack, lesion_slices, roi_boxes


def volume_with_slice_ids(depth=6, height=40, width=50):
    """HU where every voxel tells its slice (z * 1000), row and column."""
    z, y, x = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    return (z * 1000 + y * 10 + x % 10).astype(np.float32)


def test_square_contains_the_roi_of_each_slice_and_grows_by_the_margin():
    roi = np.zeros((6, 40, 50), bool)
    roi[2, 10:20, 15:21] = True  # 10 rows x 6 columns
    roi[3, 12:16, 20:36] = True  # 4 rows x 16 columns
    boxes = roi_boxes(roi, margin=0.0)
    assert boxes == [Box(2, 10, 13, 10), Box(3, 6, 20, 16)]
    for box in boxes:
        rows, cols = np.nonzero(roi[box.z])
        assert box.y0 <= rows.min() and rows.max() < box.y0 + box.size
        assert box.x0 <= cols.min() and cols.max() < box.x0 + box.size
    assert [b.size for b in roi_boxes(roi, margin=0.1)] == [12, 20]  # ceil(10 * 1.2), 16 * 1.2 = 19.2


def test_union_mode_uses_one_square_for_all_roi_slices():
    roi = np.zeros((6, 40, 50), bool)
    roi[2, 10:20, 15:21] = True
    roi[3, 12:16, 20:36] = True
    boxes = roi_boxes(roi, margin=0.0, mode="union")
    assert [b.z for b in boxes] == [2, 3]
    assert {(b.y0, b.x0, b.size) for b in boxes} == {(5, 15, 21)}  # rows 10..19 centred in 5..25, columns 15..35


def test_square_is_shifted_inside_the_image_where_it_fits():
    roi = np.zeros((3, 40, 50), bool)
    roi[1, 0:4, 46:50] = True  # in the corner
    (box,) = roi_boxes(roi, margin=1.0)  # 4 -> 12 pixels
    assert (box.y0, box.x0, box.size) == (0, 38, 12)


def test_crop_holds_the_slice_and_its_neighbours_in_order():
    hu = volume_with_slice_ids()
    crop = crop_stack(hu, Box(z=3, y0=5, x0=7, size=10))
    assert crop.shape == (10, 10, 3)
    assert np.array_equal(crop[..., 0], hu[2, 5:15, 7:17])
    assert np.array_equal(crop[..., 1], hu[3, 5:15, 7:17])
    assert np.array_equal(crop[..., 2], hu[4, 5:15, 7:17])


def test_edge_slices_repeat_and_squares_beyond_the_image_are_padded_with_air():
    hu = volume_with_slice_ids()
    first = crop_stack(hu, Box(z=0, y0=0, x0=0, size=4))
    assert np.array_equal(first[..., 0], first[..., 1])  # z-1 repeats slice 0
    last = crop_stack(hu, Box(z=5, y0=-3, x0=45, size=8))
    assert np.array_equal(last[..., 2], last[..., 1])  # z+1 repeats slice 5
    assert np.all(last[:3] == AIR_HU) and np.all(last[:, 5:] == AIR_HU)
    assert np.array_equal(last[3:, :5, 1], hu[5, 0:5, 45:50])


def test_box_larger_than_the_image_is_padded_not_shrunk():
    roi = np.ones((1, 8, 8), bool)
    (box,) = roi_boxes(roi, margin=0.5)
    assert box.size == 16 and (box.y0, box.x0) == (-4, -4)
    crop = crop_stack(np.zeros((1, 8, 8), np.float32), box)
    assert crop.shape == (16, 16, 3)
    assert np.count_nonzero(crop == AIR_HU) == 3 * (16 * 16 - 64)


def test_grown_box_keeps_its_centre():
    assert Box(1, 10, 20, 40).grown(0.25) == Box(1, 0, 10, 60)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="cube"), "box mode must be one of"),
    (dict(margin=-0.1), "margin must be >= 0"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        roi_boxes(np.ones((1, 2, 2), bool), **kwargs)


def vertebra_like_roi():
    """Slices 0-1: a 2 x 4 spinous process (8 voxels); 2-4: body 10 x 10 + process (108);
    5: the body's edge, 6 x 6 (36); slice 6 empty."""
    roi = np.zeros((7, 30, 30), bool)
    roi[0:5, 20:22, 13:17] = True
    roi[2:5, 5:15, 10:20] = True
    roi[5, 7:13, 12:18] = True
    return roi


def test_slice_rule_keeps_slices_through_the_body_and_says_which_it_dropped():
    roi = vertebra_like_roi()
    kept, dropped = lesion_slices(roi, min_area=0.35)  # 8 / 108 = 0.07 and 36 / 108 = 0.33 are out
    assert kept.tolist() == [2, 3, 4] and dropped.tolist() == [0, 1, 5]
    kept, dropped = lesion_slices(roi, min_area=0.3)
    assert kept.tolist() == [2, 3, 4, 5] and dropped.tolist() == [0, 1]
    kept, dropped = lesion_slices(roi, min_area=0.0)  # every ROI slice, never the empty one
    assert kept.tolist() == [0, 1, 2, 3, 4, 5] and dropped.size == 0
    assert [b.z for b in roi_boxes(roi, margin=0.0, min_area=0.35)] == [2, 3, 4]
    (union, *_) = roi_boxes(roi, margin=0.0, mode="union", min_area=0.35)
    assert (union.y0, union.x0, union.size) == (5, 7, 17)  # rows 5..21, columns 10..19 centred: 10 - 7 // 2
    with pytest.raises(ValueError, match="min_area must be in \\[0, 1\\]"):
        lesion_slices(roi, min_area=1.5)
