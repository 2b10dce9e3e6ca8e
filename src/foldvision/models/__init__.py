"""Models: timm backbone with in-model normalisation, the LightningModule, optimisers."""
