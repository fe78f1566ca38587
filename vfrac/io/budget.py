"""The voxel budget: how large a volume any header may claim before anything is read."""

from __future__ import annotations

import math
import os

from vfrac.errors import InputError

# Most voxels one volume may claim: 4x a 512 x 512 x 1000 CT. Checked from headers,
# before anything is inflated or allocated, so a small file cannot ask for gigabytes.
MAX_VOXELS = 2**30
MAX_VOXELS_VARIABLE = "VFRAC_MAX_VOXELS"  # overrides MAX_VOXELS, read at each check


def voxel_budget() -> int:
    """The most voxels one volume may hold: `VFRAC_MAX_VOXELS` when set, else MAX_VOXELS."""
    text = os.environ.get(MAX_VOXELS_VARIABLE, "").strip()
    if not text:
        return MAX_VOXELS
    try:
        budget = float(text)
    except ValueError:
        budget = math.nan
    if not math.isfinite(budget) or budget < 1:
        raise InputError(f"{MAX_VOXELS_VARIABLE}={text!r}: expected a positive number of voxels, e.g. 2e9")
    return int(budget)


def check_voxel_budget(source, shape) -> None:
    """Refuse a header's claimed shape over the voxel budget, before anything is read."""
    voxels, budget = math.prod(int(n) for n in shape), voxel_budget()
    if voxels > budget:
        raise InputError(
            f"{source}: claims {' x '.join(str(int(n)) for n in shape)} voxels ({_scientific(voxels)}), "
            f"over the budget of {_scientific(budget)} ({MAX_VOXELS_VARIABLE}; raise it if the volume is real)"
        )


def _scientific(number: int) -> str:
    """8000000000 as 8.0e9."""
    mantissa, exponent = f"{number:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
