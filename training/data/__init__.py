"""Photos in, training data out: photo loading, face analysis and `prepare`, captions, the latent cache."""
