"""diffalign: align text-to-image diffusion models to human and AI preferences."""

__version__ = "0.1.0"
