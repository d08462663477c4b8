"""HF cross-encoder -> validated ONNX -> Triton model repository."""
