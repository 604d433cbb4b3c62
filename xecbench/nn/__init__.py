"""Networks: masked ConvNeXt V2 and HexNeXt blocks, face encoders, fusion, the MAE."""

from .blocks import GRN, ConvNeXtV2Block, Downsample, DropPath, LayerNorm2d, zero_masked
from .encoder import PRESETS, EncoderConfig, XECEncoder, count_parameters, encoder_config, preset_parameter_counts
from .faces import FaceLayout
from .fusion import Fusion
from .hex import HexAttention, HexConv, HexNeXtBlock
from .inpaint import InpaintOutput, XECInpainter, gather_masked
from .mae import XECMAE, MAEConfig, MAEOutput, random_mask
from .posenc import POSENCS

__all__ = [
    "GRN",
    "POSENCS",
    "PRESETS",
    "ConvNeXtV2Block",
    "DropPath",
    "Downsample",
    "EncoderConfig",
    "FaceLayout",
    "Fusion",
    "HexAttention",
    "HexConv",
    "HexNeXtBlock",
    "InpaintOutput",
    "XECInpainter",
    "gather_masked",
    "masked_loss",
    "LayerNorm2d",
    "MAEConfig",
    "MAEOutput",
    "XECEncoder",
    "XECMAE",
    "count_parameters",
    "encoder_config",
    "preset_parameter_counts",
    "random_mask",
    "zero_masked",
]
