"""Dense tasks on a Vim (or any timm ViT) backbone: semantic segmentation (UperNet) and detection (Mask R-CNN)."""
