"""slmkit: build verified on-device bundles of small language models."""

__version__ = "0.1.0"
