"""Networks: masked ConvNeXt V2 and HexNeXt blocks, face encoders, fusion, the MAE, the inpainter."""

from .blocks import GRN, ConvNeXtV2Block, Downsample, DropPath, LayerNorm2d, zero_masked
from .encoder import PRESETS, EncoderConfig, XECEncoder, encoder_config
from .faces import FaceLayout
from .fusion import Fusion
from .hex import HexAttention, HexConv, HexNeXtBlock
from .inpaint import InpaintOutput, XECInpainter, gather_masked
from .mae import XECMAE, MAEConfig, MAEOutput
from .masking import MASK_UNITS, SensorMask, last_stage_cells, masked_loss, random_hidden, random_hidden_by_face
from .params import count_parameters, preset_parameter_counts
from .posenc import POSENCS

__all__ = [
    "GRN",
    "MASK_UNITS",
    "POSENCS",
    "PRESETS",
    "ConvNeXtV2Block",
    "Downsample",
    "DropPath",
    "EncoderConfig",
    "FaceLayout",
    "Fusion",
    "HexAttention",
    "HexConv",
    "HexNeXtBlock",
    "InpaintOutput",
    "LayerNorm2d",
    "MAEConfig",
    "MAEOutput",
    "SensorMask",
    "XECEncoder",
    "XECInpainter",
    "XECMAE",
    "count_parameters",
    "encoder_config",
    "gather_masked",
    "last_stage_cells",
    "masked_loss",
    "preset_parameter_counts",
    "random_hidden",
    "random_hidden_by_face",
    "zero_masked",
]
