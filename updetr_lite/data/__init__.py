"""Data: pretext images with random query patches, detection sets (embedded, COCO, VOC)."""
