"""avbalance: balanced audio-visual learning (OGM-GE and beyond)."""

__version__ = "0.1.0"
