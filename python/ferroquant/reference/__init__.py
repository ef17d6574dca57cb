"""NumPy twins of every native kernel. Each one specifies its Rust counterpart (named in its docstring) and has
the signature and result types of its :mod:`ferroquant.ops` counterpart (less ``name``), so
``ferroquant.ops.backend("reference")`` stands in for the native kernels; the tests check that the two agree.
Slow on purpose: clarity first, vectorized where that stays readable."""

import sys

from ferroquant.reference.adaround import *  # noqa: F401,F403 - each submodule's __all__ lists its public names once
from ferroquant.reference.affine import *  # noqa: F401,F403
from ferroquant.reference.arq import *  # noqa: F401,F403
from ferroquant.reference.baselines import *  # noqa: F401,F403
from ferroquant.reference.hfmg import *  # noqa: F401,F403
from ferroquant.reference.histogram import *  # noqa: F401,F403
from ferroquant.reference.ifmr import *  # noqa: F401,F403
from ferroquant.reference.metrics import *  # noqa: F401,F403
from ferroquant.reference.nuq import *  # noqa: F401,F403
from ferroquant.reference.output_clip import *  # noqa: F401,F403
from ferroquant.reference.qparams import *  # noqa: F401,F403
from ferroquant.reference.text import *  # noqa: F401,F403
from ferroquant.reference.ulq import *  # noqa: F401,F403
from ferroquant.reference.awq import *  # noqa: F401,F403 - weight-only: group-wise RTN, GPTQ, AWQ, SmoothQuant
from ferroquant.reference.gptq import *  # noqa: F401,F403
from ferroquant.reference.groupwise import *  # noqa: F401,F403
from ferroquant.reference.smooth import *  # noqa: F401,F403

__all__ = sorted(n for m in ("adaround", "affine", "arq", "baselines", "hfmg", "histogram", "ifmr", "metrics", "nuq", "output_clip", "qparams",
                            "text", "ulq", "awq", "gptq", "groupwise", "smooth") for n in sys.modules[f"{__name__}.{m}"].__all__)
