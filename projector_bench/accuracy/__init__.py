"""What a design keeps: the accuracy proxy, its training loop and the stand-in encoder."""
