"""The SimCLR chapter: SimCLR (Chen et al. 2020) in idiomatic PyTorch."""
