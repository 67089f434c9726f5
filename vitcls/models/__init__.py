"""The network (backbone, feature tap, head registry, classifier) and the LightningModule that trains it."""
