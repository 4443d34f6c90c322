"""Vector fusions: M tensors ``[..., D_m]`` -> one ``[..., out_dim]``.

Importing this package registers every vector fusion with the registry.
"""

from ._base import VectorFusion
from .bilinear import LMF, MCB, TFN, Bilinear
from .factorized import MFB, MFH, MLB, Block, BlockTucker, Mutan, Tucker
from .gated import DPP, GMU, MRN
from .simple import Concat, ConcatMLP, LinearSum, Product, ProjectCombine, WeightedSum

__all__ = [
    "VectorFusion",
    "Concat",
    "ConcatMLP",
    "LinearSum",
    "Product",
    "ProjectCombine",
    "WeightedSum",
    "GMU",
    "MRN",
    "DPP",
    "Bilinear",
    "TFN",
    "LMF",
    "MCB",
    "MLB",
    "MFB",
    "MFH",
    "Tucker",
    "Mutan",
    "Block",
    "BlockTucker",
]
