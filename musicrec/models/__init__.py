"""The autoencoder and its feature scaler (no I/O here)."""
