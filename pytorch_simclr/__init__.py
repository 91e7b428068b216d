"""The SimCLR chapter: SimCLR (Chen et al. 2020) in idiomatic PyTorch."""

from common.chapter import Chapter

TORCHRUN = "torchrun --nproc-per-node {processes} -m {module}"
"""How a data-parallel run of one machine starts (``distributed.py``); a run over several machines
resumes with its own torchrun options (``--nnodes``, the rendezvous), each machine its processes."""

CHAPTER = Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch", multi_process_launch=TORCHRUN)

SUPERVISED = Chapter("pytorch", "supervised", "pytorch_simclr", "Supervised baseline / PyTorch",
                     train_module="supervised", multi_process_launch=TORCHRUN,
                     unused_flags=(("temperature", "its loss is the cross-entropy of the labels"),))
"""The supervised baseline (``supervised.py``): the same encoder and loop, trained on the labels."""
