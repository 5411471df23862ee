"""Training: the Lightning data module, the DualGR LightningModule and SID preparation."""
