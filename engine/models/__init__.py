"""Segmentation networks written in plain torch: ResNet and MobileNetV2 encoders, a U-Net decoder,
teachers and students by name (:func:`create_model`), parameter / FLOP counts."""

from engine.models.flops import count_flops, count_params
from engine.models.registry import create_model, load_encoder_weights, model_names, register_model
from engine.models.unet import SegmentationModel

__all__ = ["SegmentationModel", "count_flops", "count_params", "create_model",
           "load_encoder_weights", "model_names", "register_model"]
