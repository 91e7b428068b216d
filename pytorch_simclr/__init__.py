"""The SimCLR chapter: SimCLR (Chen et al. 2020) in idiomatic PyTorch."""

from common.chapter import Chapter

CHAPTER = Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch")
