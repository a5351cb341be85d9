"""Other systems' wire protocols over the same library (DESIGN §13)."""
