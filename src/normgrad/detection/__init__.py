"""Explaining object detectors (torchvision's Faster / Mask R-CNN, RetinaNet, FCOS, SSD).

>>> from normgrad import detection
>>> found = detection.detect(model, photos)                     # boxes in photo pixels
>>> maps = detection.saliency(model, photos, detection.DetectionScore(found[0]["boxes"][0], int(found[0]["labels"][0])))
>>> maps.combined()                                              # (N, 1, H, W) on the photo
"""

from normgrad.detection.detector import is_detector, on_resized, pyramid_levels, resize
from normgrad.detection.geometry import Resized, map_to_photo
from normgrad.detection.saliency import DetectionMaps, detect, gradcam, maps_with, saliency
from normgrad.detection.targets import AllDetections, ClassDetections, DetectionScore, box_iou, detections_of

__all__ = [
    "AllDetections",
    "ClassDetections",
    "DetectionMaps",
    "DetectionScore",
    "Resized",
    "box_iou",
    "detect",
    "detections_of",
    "gradcam",
    "is_detector",
    "map_to_photo",
    "maps_with",
    "on_resized",
    "pyramid_levels",
    "resize",
    "saliency",
]
