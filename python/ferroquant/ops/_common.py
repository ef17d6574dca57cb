"""Names shared by the ops modules."""

from __future__ import annotations

from typing import Union

import numpy as np

ArrayLike = Union[np.ndarray, float, int, list]
