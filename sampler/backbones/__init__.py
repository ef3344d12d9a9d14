"""Extra classifier backbones (see ``sampler.classifier.BACKBONES``)."""
