"""The SimCLR chapter: SimCLR (Chen et al. 2020) in idiomatic PyTorch."""

from common.chapter import Chapter

CHAPTER = Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch")

SUPERVISED = Chapter("pytorch", "supervised", "pytorch_simclr", "Supervised baseline / PyTorch",
                     train_module="supervised",
                     unused_flags=(("temperature", "its loss is the cross-entropy of the labels"),))
"""The supervised baseline (``supervised.py``): the same encoder and loop, trained on the labels."""
