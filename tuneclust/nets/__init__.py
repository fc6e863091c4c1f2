"""Network architectures used by the methods."""
