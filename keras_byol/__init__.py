"""The BYOL chapter: BYOL (Grill et al. 2020) in Keras 3, one code path on TensorFlow, JAX and PyTorch."""
