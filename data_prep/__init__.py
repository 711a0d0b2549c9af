"""Dataset preparation: raw public layouts in, memory-mapped arrays out (see store.py)."""
