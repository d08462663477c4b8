"""Local Triton server launcher."""
