"""devicetrust: only known, registered, hardware-enrolled devices may open infrastructure sessions."""

__version__ = "0.1.0"
