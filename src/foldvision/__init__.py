"""foldvision: K-fold image classification for competitions (Lightning + Hydra + timm)."""

__version__ = "0.1.0"
