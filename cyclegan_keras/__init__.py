"""CycleGAN for Keras 3 on TensorFlow."""

from cyclegan_keras import layers, networks
from cyclegan_keras.image_pool import ImagePool
from cyclegan_keras.layers import InstanceNormalization, ReflectionPadding2D
from cyclegan_keras.model import CycleGAN

__all__ = ["CycleGAN", "ImagePool", "InstanceNormalization", "ReflectionPadding2D", "layers", "networks"]
