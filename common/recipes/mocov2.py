"""MoCo v2's recipes (He et al. 2020; Chen et al. 2020, "Improved Baselines with Momentum
Contrastive Learning"), each with the provenance of every value.

- ``quick``: this project's CPU demo.
- ``cifar10``: the MoCo authors' CIFAR-10 demo (facebookresearch/moco, branch ``colab-notebook``)
  with MoCo v2's MLP head and temperature; it keeps the demo's augmentation (no blur, crops from 8%)
  and its cosine schedule, so of MoCo v2's changes (MLP head, aug+, cosine) it has two.
- ``stl10``: the authors' MoCo v2 ImageNet settings (``main_moco.py --mlp --moco-t 0.2 --aug-plus
  --cos``) carried to STL-10 with a ResNet-18 and a queue sized to the dataset.
"""

from common.recipes.provenance import NOT_IN_SOURCE, PER_STEP, Recipe, Setting, Source, decays_every_parameter

MOCO = "github.com/facebookresearch/moco"
DEMO_COMMIT = "f7364915bc4e9161427d7c6bb4f454fa0f171337"  # branch colab-notebook, 2020-08-21
MAIN_COMMIT = "7397dfe146c7ca6bbb58e9c382498069178ba764"  # main, 2023-01-18: before the automated
# reformatting and annotation commits of 2024-2026 and the removal of the code from main (2026)


def _facts(head_cited: str) -> dict[str, Setting]:
    return {
        "head_layout": Setting("Linear-ReLU-Linear (biases)", "Linear-ReLU-Linear (biases)", head_cited),
        "head_init": Setting("PyTorch nn.Linear default", "PyTorch nn.Linear default",
                             "moco/builder.py: nn.Linear layers, no explicit init"),
        "key_encoder_init": Setting("copy of the query encoder", "copy of the query encoder",
                                    "moco/builder.py: param_k.data.copy_(param_q.data)"),
        "key_bn_statistics": Setting("skip", "skip", "moco/builder.py _momentum_update_key_encoder: "
                                                     "parameters only; the key encoder's BN keeps "
                                                     "its own running statistics"),
        "zero_init_residual": Setting(True, False, "torchvision resnet default",
                                      "the project's one encoder initialisation (common/arch.py)"),
        "input_normalization": Setting("per-channel mean/std", "per-channel mean/std",
                                       "transforms.Normalize"),
    }


QUICK = Recipe(
    description="built-in `digits`, small ResNet-18, about 2 CPU minutes",
    source=Source(title="this project: chosen to learn visibly on 2 CPU cores in minutes",
                  where="measured in tensorflow_moco/README.md",
                  reference="none published (a demo, not a benchmark)"),
    settings={
        "dataset": Setting("digits", "digits", "built in, offline"),
        "train_split": Setting("train", "train", "the labelled images, labels unused"),
        "arch": Setting("resnet18_small", "resnet18_small", "ResNet-18 at 1/4 width: CPU-sized"),
        "image_size": Setting(32, 32, "the digits are upscaled to 32 px"),
        "augment": Setting("mocov2", "mocov2", "MoCo's CIFAR augmentation preset"),
        "epochs": Setting(8, 8, "kNN 0.606 -> 0.713 in about 2 min on 2 CPU cores (README); MoCo's "
                                "one-sided gradient learns more slowly than SimCLR's here, and "
                                "more epochs buy little (0.665 after 40 with SGD)"),
        "batch_size": Setting(128, 128, "11 steps per epoch of 1,442 images"),
        "optimizer": Setting("adamw", "adamw", "as the other quick recipes: MoCo's SGD (lr 0.06, "
                                               "the CIFAR demo's) lifted kNN by 0.06 in 40 epochs, "
                                               "AdamW by 0.13 in 10"),
        "lr": Setting(2e-3, 2e-3, "AdamW rate of the other quick recipes (5e-3 learned less)"),
        "lr_scaling": Setting("none", "none", "the rate is for this batch"),
        "weight_decay": Setting(1e-4, 1e-4, "AdamW's decoupled decay"),
        "warmup_epochs": Setting(1, 1, "one epoch of warm-up for AdamW's first steps"),
        "temperature": Setting(0.2, 0.2, "MoCo v2's"),
        "projection_dim": Setting(128, 128, "MoCo's key width"),
        "projection_hidden_dim": Setting(128, 128, "as wide as the small encoder's h"),
        "projection_layers": Setting(2, 2, "MoCo v2's MLP head"),
        "queue_size": Setting(512, 512, "about a third of the 1,442 training images: a queue should "
                                        "be small against the dataset, and a multiple of the batch"),
        "key_momentum": Setting(0.99, 0.99, "the CIFAR demo's m for short runs"),
        "key_momentum_schedule": Setting("constant", "constant", "as MoCo"),
        "symmetric_loss": Setting(False, False, "MoCo's asymmetric loss"),
        "shuffle_bn": Setting(True, True, "MoCo's shuffling BN"),
        "bn_splits": Setting(8, 8, "the CIFAR demo's split BN on one device"),
        "knn_k": Setting(20, 20, "a seventh of a class's 144 training images (k 200 would exceed a class)"),
        "knn_temperature": Setting(0.1, 0.1, "the kNN monitor's T"),
    },
    run={"knn_every": 4},
)

CIFAR10 = Recipe(
    description="ResNet-18 (CIFAR stem) on CIFAR-10, 200 epochs: the MoCo authors' CIFAR-10 demo with "
                "MoCo v2's MLP head",
    source=Source(
        title="facebookresearch/moco, colab/moco_cifar10_demo.ipynb (the authors' CIFAR-10 demo)",
        where=f"{MOCO} branch colab-notebook, colab/moco_cifar10_demo.ipynb @ {DEMO_COMMIT}",
        reference="kNN monitor top-1 82.6% after 200 epochs (asymmetric loss; 85.3% symmetric), "
                  "ResNet-18, the demo's linear head and T 0.1, last epoch, on the head's 128-d "
                  "output (its test() runs encoder_q, fc included; ours uses the 512-d h). Our MLP "
                  "head and T 0.2 (MoCo v2) make it a reference point, not a target",
    ),
    settings={
        "dataset": Setting("cifar10", "cifar10", "CIFAR10(root='data', train=True)"),
        "train_split": Setting("train", "train", "the 50,000 training images"),
        "arch": Setting("resnet18", "resnet18", "--arch default 'resnet18', CIFAR stem: 3x3 "
                                                "stride-1 conv, max-pool removed"),
        "image_size": Setting(32, 32, "RandomResizedCrop(32)"),
        "augment": Setting("mocov2", "mocov2", "RandomResizedCrop(32), ColorJitter(0.4, 0.4, 0.4, "
                                               "0.1) p 0.8, RandomGrayscale(0.2), flip, no blur"),
        "epochs": Setting(200, 200, "args.epochs = 200"),
        "batch_size": Setting(512, 512, "--batch-size default 512"),
        "optimizer": Setting("sgd", "sgd", "torch.optim.SGD(..., momentum=0.9)"),
        "lr": Setting(0.03, 0.03, "the --lr comment: 'lr: 0.06 for batch 512 (or 0.03 for batch "
                                  "256)', i.e. 0.03 per 256 images"),
        "lr_scaling": Setting("linear", "linear", "the same comment: the rate follows the batch, "
                                                  "0.03 x B/256 (the --lr default 0.06 at batch 512)"),
        "weight_decay": Setting(5e-4, 5e-4, "--wd default 5e-4"),
        "momentum": Setting(0.9, 0.9, "SGD(momentum=0.9)"),
        "warmup_epochs": Setting(0, 0, "args.cos = True, no warm-up"),
        "temperature": Setting(0.2, 0.1, "--moco-t default 0.1",
                               "MoCo v2's temperature for its MLP head (Chen et al. 2020, section 3, "
                               "MLP head: 0.2 is best with the MLP head, 0.07-0.1 without)"),
        "projection_dim": Setting(128, 128, "--moco-dim default 128"),
        "projection_hidden_dim": Setting(512, NOT_IN_SOURCE, "the demo's head is one Linear(512, 128)",
                                         "MoCo v2's MLP: a hidden layer as wide as h (512 for "
                                         "ResNet-18; moco/builder.py dim_mlp)"),
        "projection_layers": Setting(2, 1, "the demo's head is one Linear(512, 128)",
                                     "MoCo v2's 2-layer MLP head (Chen et al. 2020, sec. 3: "
                                     "+5.6 points on ImageNet); this chapter is MoCo v2"),
        "queue_size": Setting(4096, 4096, "--moco-k default 4096 (8% of CIFAR-10's 50,000 images; "
                                          "'saturated at 4096')"),
        "key_momentum": Setting(0.99, 0.99, "--moco-m default 0.99"),
        "key_momentum_schedule": Setting("constant", "constant", "m is constant"),
        "symmetric_loss": Setting(False, False, "args.symmetric = False (the logged 82.6% run)"),
        "shuffle_bn": Setting(True, True, "_batch_shuffle_single_gpu"),
        "bn_splits": Setting(8, 8, "--bn-splits default 8 (simulates 8 GPUs on one)"),
        "knn_k": Setting(200, 200, "--knn-k default 200"),
        "knn_temperature": Setting(0.1, 0.1, "--knn-t default 0.1"),
    },
    facts={**_facts("MoCo v2's head (moco/builder.py --mlp); the demo has a single Linear"),
           "input_normalization": Setting(
               "CIFAR-10 per-pixel std", "std (0.2023, 0.1994, 0.2010)", "transforms.Normalize",
               "the project's one CIFAR statistics (common/augment/presets.py: the source's std is "
               "a mean of per-image stds)"),
           "decayed_tensors": decays_every_parameter("torch.optim.SGD(model.parameters(), ..., "
                                                     "weight_decay=args.wd)"),
           "schedule": Setting("cosine per step", "cosine per epoch", "adjust_learning_rate", PER_STEP)},
    run={"knn_every": 10},
)

STL10 = Recipe(
    description="ResNet-18 (ImageNet stem, 96 px) on STL-10 unlabeled, 200 epochs: MoCo v2's "
                "ImageNet settings",
    source=Source(
        title="facebookresearch/moco main_moco.py with MoCo v2's flags (--mlp --moco-t 0.2 "
              "--aug-plus --cos)",
        where=f"{MOCO} main_moco.py and README.md @ {MAIN_COMMIT}",
        reference="none published for STL-10 (MoCo v2's 67.5% is ImageNet, ResNet-50, linear "
                  "classifier)",
    ),
    settings={
        "dataset": Setting("stl10", "imagenet", "main_moco.py DATA path",
                           "STL-10 is ImageNet-like (96 px photos, 100,000 unlabelled) and fits "
                           "one GPU"),
        "train_split": Setting("unlabeled", "train", "ImageNet's training split",
                               "STL-10's 100,000 unlabelled images are its pre-training split"),
        "arch": Setting("resnet18", "resnet50", "--arch default 'resnet50'",
                        "ResNet-18 fits a single GPU at 96 px"),
        "image_size": Setting(96, 224, "RandomResizedCrop(224)", "STL-10's native size"),
        "augment": Setting("mocov2", "mocov2", "--aug-plus: crop scale (0.2, 1), ColorJitter(0.4, 0.4, "
                                               "0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip"),
        "epochs": Setting(200, 200, "--epochs default 200"),
        "batch_size": Setting(256, 256, "--batch-size default 256"),
        "optimizer": Setting("sgd", "sgd", "torch.optim.SGD"),
        "lr": Setting(0.03, 0.03, "--lr default 0.03 at --batch-size 256"),
        "lr_scaling": Setting("linear", "linear", "README.md: 'we recommend following the linear lr "
                                                  "scaling recipe' (--lr 0.015 --batch-size 128)"),
        "weight_decay": Setting(1e-4, 1e-4, "--wd default 1e-4"),
        "momentum": Setting(0.9, 0.9, "--momentum default 0.9"),
        "warmup_epochs": Setting(0, 0, "--cos, no warm-up"),
        "temperature": Setting(0.2, 0.2, "--moco-t 0.2 (MoCo v2)"),
        "projection_dim": Setting(128, 128, "--moco-dim default 128"),
        "projection_hidden_dim": Setting(512, 2048, "dim_mlp = the encoder's width (2048 for "
                                                    "ResNet-50)", "ResNet-18's h is 512 wide"),
        "projection_layers": Setting(2, 2, "--mlp: Linear-ReLU-Linear"),
        "queue_size": Setting(8192, 65536, "--moco-k default 65536",
                              "the queue sized to the dataset: 65,536 is 5% of ImageNet's 1.28 M "
                              "images, 4,096 is 8% of CIFAR-10; 8,192 is 8% of STL-10's 100,000"),
        "key_momentum": Setting(0.999, 0.999, "--moco-m default 0.999"),
        "key_momentum_schedule": Setting("constant", "constant", "m is constant"),
        "symmetric_loss": Setting(False, False, "main_moco.py: one direction"),
        "shuffle_bn": Setting(True, True, "moco/builder.py _batch_shuffle_ddp"),
        "bn_splits": Setting(8, 8, "8 GPUs of 32 images each: the per-device BN of the source",
                             ),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor",
                         "the MoCo CIFAR demo's kNN monitor, the project's shared protocol"),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor",
                                   "the MoCo CIFAR demo's kNN monitor, the project's shared protocol"),
    },
    facts={**_facts("moco/builder.py --mlp"),
           "decayed_tensors": decays_every_parameter("main_moco.py: torch.optim.SGD(model.parameters(), "
                                                     "..., weight_decay=args.weight_decay)"),
           "schedule": Setting("cosine per step", "cosine per epoch", "adjust_learning_rate", PER_STEP)},
    run={"knn_every": 10, "knn_train_split": "train", "knn_test_split": "test"},
)

RECIPES = {"quick": QUICK, "cifar10": CIFAR10, "stl10": STL10}
METHOD_KEYS = ("temperature", "projection_dim", "projection_hidden_dim", "projection_layers",
               "queue_size", "key_momentum", "key_momentum_schedule", "symmetric_loss", "shuffle_bn",
               "bn_splits")
