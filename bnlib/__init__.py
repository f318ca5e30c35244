"""bnlib: batch normalization from scratch, a drop-in twin of ``torch.nn.BatchNorm*d``, and the
models, data, training loops, experiments and plots of the batch normalization book."""

from bnlib import functional
from bnlib.convert import convert
from bnlib.distributed import SyncBatchNorm
from bnlib.doctor import diagnose
from bnlib.folding import fold
from bnlib.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

__version__ = "0.1.0"
__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "convert",
    "diagnose",
    "fold",
    "functional",
    "__version__",
]
