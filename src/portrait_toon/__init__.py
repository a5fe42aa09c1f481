"""portrait_toon: train networks that turn any photo of a person into a Webtoon-style cartoon."""

__version__ = "0.1.0"
