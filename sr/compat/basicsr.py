"""The single entry point to basicsr 1.4.2; every use of basicsr in this project imports from here.

basicsr 1.4.2 predates current torch/torchvision in two places, both mended here once:

1. It imports ``torchvision.transforms.functional_tensor``, which torchvision renamed to
   ``torchvision.transforms._functional_tensor``. We alias the old module name before basicsr is imported.
2. ``filter2D`` calls ``.view()`` on its input. ``DiffJPEG`` returns channels-last tensors under torch 2.14, so a
   blur after a JPEG stage crashes with "view size is not compatible". We make the input contiguous first and
   install the mended function back into basicsr, so ``USMSharp`` (which looks it up in its module) uses it too.
"""

import sys

import torchvision.transforms._functional_tensor as _functional_tensor

sys.modules.setdefault("torchvision.transforms.functional_tensor", _functional_tensor)

import basicsr.utils.img_process_util as _img_process_util  # noqa: E402
from basicsr.archs.rrdbnet_arch import RRDB  # noqa: E402  (the reference of sr.models.rrdb, tests/test_rrdb.py)
from basicsr.data import degradations  # noqa: E402
from basicsr.utils.diffjpeg import DiffJPEG  # noqa: E402

_basicsr_filter2D = _img_process_util.filter2D


def filter2D(img, kernel):
    """basicsr's ``filter2D`` (reflect-padded per-sample convolution) on a contiguous copy of ``img``."""
    return _basicsr_filter2D(img.contiguous(), kernel)


_img_process_util.filter2D = filter2D
USMSharp = _img_process_util.USMSharp

__all__ = ["DiffJPEG", "RRDB", "USMSharp", "degradations", "filter2D"]
