"""netshrink.quant: quantization-aware training for any weight/activation width, post-training
int8, and real bit-packed models. Depends on torch, safetensors and netshrink-core only.

    from netshrink.quant import QuantConfig, quantize_, save_packed, load_packed
    model = quantize_(model, QuantConfig(w="ternary", a="binary"))
    ...train with any loop (binary latent weights are centred and clipped by the layers)...
    save_packed(model.eval(), "model.safetensors")   # 1.6 bits per ternary weight
    deployed = load_packed("model.safetensors")      # outputs bit-identical to model's

Where things are: ``config`` (QuantConfig), ``quantizers/`` (``dorefa``, ``pact``, ``lsq``,
``ternary``, ``binary``, ``half``, ``int8_affine``), ``estimators`` (ste, saturate_ste,
soft_ste), ``observers`` (range observers), ``layers`` (quantized Conv2d / ConvTranspose2d /
Linear), ``conv_bn`` (Conv+BN folded for int8 QAT), ``freeze`` (late-training BN statistics
and observer freezes), ``quantize`` (quantize_(), the recipe stage),
``ptq`` (calibrate, weight-only uint8 / fp16), ``bitpack`` and ``packing`` (packed files),
``structure`` (the model's fx graph as JSON).
"""

# ``x as x`` imports: the former names of the functions that modify their model (now ending in
# '_'), importable with a DeprecationWarning on each call; not in __all__
# (docs/api-conventions.md).
from netshrink.quant.bitpack import (
    pack_bits,
    pack_codes,
    pack_trits,
    unpack_bits,
    unpack_codes,
    unpack_trits,
)
from netshrink.quant.config import (
    A_QUANTIZERS,
    ESTIMATOR_NAMES,
    LAYER_POLICIES,
    PRECISIONS,
    SCHEMES,
    Precision,
    QuantConfig,
)
from netshrink.quant.conv_bn import QuantConvBn2d, find_conv_bn_pairs
from netshrink.quant.estimators import ESTIMATORS, list_estimators, quantize_with_estimator
from netshrink.quant.freeze import freeze_bn_stats as freeze_bn_stats
from netshrink.quant.freeze import freeze_bn_stats_, freeze_observers_
from netshrink.quant.freeze import freeze_observers as freeze_observers
from netshrink.quant.layers import (
    QUANT_LAYERS,
    FrozenWeight,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
)
from netshrink.quant.observers import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageObserver,
    Observer,
    PercentileObserver,
    list_observers,
)
from netshrink.quant.packing import (
    PackedFileError,
    PackedSize,
    load_packed,
    packed_size,
    read_structure,
    save_packed,
)
from netshrink.quant.ptq import calibrate as calibrate
from netshrink.quant.ptq import calibrate_, convert_fp16_, quantize_weights_uint8_
from netshrink.quant.ptq import convert_fp16 as convert_fp16
from netshrink.quant.ptq import quantize_weights_uint8 as quantize_weights_uint8
from netshrink.quant.quantize import (
    QuantizeStage,
    calibrate_act_clips_,
    constrain_latent_weights_,
    quantizable_layers,
    quantize_,
    quantized_layers,
)
from netshrink.quant.quantize import calibrate_act_clips as calibrate_act_clips
from netshrink.quant.quantize import constrain_latent_weights as constrain_latent_weights
from netshrink.quant.quantize import quantize as quantize
from netshrink.quant.quantizers import (
    ACT_QUANTIZERS,
    WEIGHT_QUANTIZERS,
    ActQuantizer,
    AffineAct,
    AffineWeight,
    BinaryAct,
    BinaryWeight,
    DoReFaAct,
    DoReFaWeight,
    HalfAct,
    HalfWeight,
    LSQAct,
    PACTAct,
    QuantScheme,
    TernaryAct,
    TernaryWeight,
    WeightQuantizer,
    list_act_quantizers,
    list_schemes,
    list_weight_quantizers,
    register_kbit_act_quantizer,
    register_scheme,
)
from netshrink.quant.structure import StructureError

__all__ = [
    "A_QUANTIZERS", "ACT_QUANTIZERS", "ESTIMATORS", "ESTIMATOR_NAMES", "LAYER_POLICIES",
    "OBSERVERS", "PRECISIONS", "QUANT_LAYERS", "SCHEMES", "WEIGHT_QUANTIZERS",
    "ActQuantizer", "AffineAct", "AffineWeight", "BinaryAct", "BinaryWeight", "DoReFaAct",
    "DoReFaWeight", "FrozenWeight", "HalfAct", "HalfWeight", "LSQAct", "MinMaxObserver",
    "MovingAverageObserver", "Observer", "PACTAct", "PackedFileError", "PackedSize",
    "PercentileObserver", "Precision", "QuantConfig", "QuantConv2d", "QuantConvBn2d",
    "QuantConvTranspose2d", "QuantLinear", "QuantizeStage", "StructureError", "TernaryAct",
    "TernaryWeight", "WeightQuantizer",
    "calibrate_", "calibrate_act_clips_", "constrain_latent_weights_", "convert_fp16_",
    "find_conv_bn_pairs",
    "freeze_bn_stats_", "freeze_observers_", "list_act_quantizers", "list_estimators",
    "list_observers", "list_weight_quantizers", "load_packed", "pack_bits", "pack_codes",
    "pack_trits", "packed_size", "quantizable_layers", "quantize_", "quantize_weights_uint8_",
    "quantize_with_estimator", "quantized_layers", "read_structure", "save_packed", "unpack_bits",
    "unpack_codes", "unpack_trits",
    # extension points (docs/extending.md)
    "QuantScheme", "list_schemes", "register_kbit_act_quantizer", "register_scheme",
]
