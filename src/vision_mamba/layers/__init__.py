"""Modules with parameters and their initialisation; the computation lives in :mod:`vision_mamba.ops`."""
from .block import VimBlock
from .embed import PatchEmbed, class_token_index, grid_size, resample_pos_embed
from .mixer import BiMambaMixer
from .norm import RMSNorm

__all__ = ["VimBlock", "PatchEmbed", "class_token_index", "grid_size", "resample_pos_embed", "BiMambaMixer",
           "RMSNorm"]
