"""What is measured: the design registry, the projectors, the encoders, the LM shapes."""
