"""One attack or search per module (torchattacks style), all written against ScoreBackend."""
