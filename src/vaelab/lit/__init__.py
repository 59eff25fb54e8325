"""The Lightning layer: the generic LightningModule, its callbacks and loggers."""
