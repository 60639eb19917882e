"""netshrink.models: the model zoo (NIN, NIN-GC, MobileNet student, CIFAR ResNet-18, torchvision).

Build by name with ``create_model("nin", width=0.5)``; every model carries ``netshrink_spec`` so
``save_model``/``load_model`` can rebuild it from a checkpoint.
"""

from netshrink.models.channel_shuffle import ChannelShuffle
from netshrink.models.loading import load_model, save_model
from netshrink.models.mobilenet_student import MobileNetStudent
from netshrink.models.nin import NIN
from netshrink.models.nin_gc import NINGC
from netshrink.models.registry import MODELS, create_model, list_models, register_model
from netshrink.models.resnet_cifar import ResNetCIFAR

__all__ = [
    "MODELS", "NIN", "NINGC", "ChannelShuffle", "MobileNetStudent", "ResNetCIFAR",
    "create_model", "list_models", "load_model", "register_model", "save_model",
]
