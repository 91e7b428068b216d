"""The supervised baseline's recipes: the same encoder trained on the labels with cross-entropy
(``pytorch_simclr/supervised.py``), the upper reference a comparison of SSL methods is read against.

- ``quick``: this project's CPU demo budget, the same data as the SSL quick recipes.
- ``cifar10``: kuangliu/pytorch-cifar, the widely used ResNet-18 CIFAR-10 training script.
- ``stl10``: that recipe carried to STL-10's 5,000 labelled training images at 96 px.
"""

from common.recipes.provenance import NOT_IN_SOURCE, PER_STEP, Recipe, Setting, Source, decays_every_parameter

KUANGLIU = "github.com/kuangliu/pytorch-cifar"
KUANGLIU_COMMIT = "49b7aa97b0c12fe0d4054e670403a16b6b834ddd"
PAD_CROP = ("a padded crop is not one of the project's ops; torchvision's ImageNet training crop "
            "(RandomResizedCrop, scale 0.08-1) and flip instead (common/augment/presets.py "
            "supervised)")
SHARED_KNN = "the MoCo CIFAR demo's kNN monitor, the project's shared protocol"


def _encoder_facts() -> dict[str, Setting]:
    """kuangliu/pytorch-cifar's ResNet against the project's one encoder."""
    return {
        "zero_init_residual": Setting(True, False, "models/resnet.py: nn.BatchNorm2d defaults (gamma 1)",
                                      "the project's one encoder initialisation (common/arch.py)"),
        "conv_init": Setting("He normal, fan-out", "PyTorch Conv2d default",
                             "models/resnet.py: no explicit initialisation",
                             "the project's one encoder initialisation (common/arch.py)"),
    }


def _settings(**overrides) -> dict[str, Setting]:
    settings = {
        "dataset": Setting("cifar10", "cifar10", "torchvision.datasets.CIFAR10(train=True)"),
        "train_split": Setting("train", "train", "the 50,000 labelled training images"),
        "arch": Setting("resnet18", "resnet18", "models/resnet.py ResNet18: 3x3 stem, no max-pool "
                                                "(main.py line 58, commented out: its default is SimpleDLA)"),
        "image_size": Setting(32, 32, "RandomCrop(32, padding=4)"),
        "augment": Setting("supervised", "pad-4 crop + flip", "RandomCrop(32, padding=4), "
                                                              "RandomHorizontalFlip()", PAD_CROP),
        "epochs": Setting(200, 200, "range(start_epoch, start_epoch+200)"),
        "batch_size": Setting(128, 128, "batch_size=128"),
        "optimizer": Setting("sgd", "sgd", "optim.SGD"),
        "lr": Setting(0.1, 0.1, "--lr default 0.1"),
        "lr_scaling": Setting("none", "none", "the rate is for batch 128"),
        "weight_decay": Setting(5e-4, 5e-4, "weight_decay=5e-4"),
        "momentum": Setting(0.9, 0.9, "momentum=0.9"),
        "warmup_epochs": Setting(0, 0, "CosineAnnealingLR, no warm-up"),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor", SHARED_KNN),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor", SHARED_KNN),
    }
    return {**settings, **overrides}


QUICK = Recipe(
    description="built-in `digits`, small ResNet-18: the labels' upper reference for the quick demos",
    source=Source(title="this project: the SSL quick recipes' data and encoder, trained on labels",
                  where="measured by python -m common.compare",
                  reference="none published (a demo, not a benchmark)"),
    settings={
        "dataset": Setting("digits", "digits", "the quick recipes' dataset"),
        "train_split": Setting("train", "train", "the labelled images"),
        "arch": Setting("resnet18_small", "resnet18_small", "the quick recipes' encoder"),
        "image_size": Setting(32, 32, "the quick recipes' size"),
        "augment": Setting("supervised", "supervised", "crop and flip"),
        "epochs": Setting(40, 40, "the quick recipes' budget"),
        "batch_size": Setting(128, 128, "the quick recipes' batch"),
        "optimizer": Setting("sgd", "sgd", "kuangliu/pytorch-cifar's optimiser"),
        "lr": Setting(0.1, 0.1, "kuangliu/pytorch-cifar's rate for batch 128"),
        "lr_scaling": Setting("none", "none", "the rate is for this batch"),
        "weight_decay": Setting(5e-4, 5e-4, "kuangliu/pytorch-cifar's"),
        "momentum": Setting(0.9, 0.9, "SGD momentum"),
        "warmup_epochs": Setting(0, 0, "no warm-up"),
        "knn_k": Setting(20, 20, "a seventh of a class's 144 training images (k 200 would exceed a class)"),
        "knn_temperature": Setting(0.1, 0.1, "the kNN monitor's T"),
    },
    run={"knn_every": 10},
)

CIFAR10 = Recipe(
    description="ResNet-18 (CIFAR stem) trained on CIFAR-10's labels, 200 epochs",
    source=Source(title="kuangliu/pytorch-cifar main.py", where=f"{KUANGLIU} main.py @ {KUANGLIU_COMMIT}",
                  reference="93.02% test accuracy of the trained classifier itself (README, "
                            "ResNet18), not a probe of frozen features, and not of this commit's "
                            "schedule: measured in 2017 (README @ dfa54c6) with an earlier main.py "
                            "and a hand-stepped rate (0.1, 0.01, 0.001 over 350 epochs, README @ "
                            "5b79044), the best test epoch kept; none is published for the cosine "
                            "200 epochs"),
    settings=_settings(),
    facts={"schedule": Setting("cosine per step", "cosine per epoch", "CosineAnnealingLR(T_max=200)",
                               PER_STEP),
           "decayed_tensors": decays_every_parameter("optim.SGD(net.parameters(), ..., "
                                                     "weight_decay=5e-4)"),
           **_encoder_facts(),
           "input_normalization": Setting("CIFAR-10 per-pixel std", "std (0.2023, 0.1994, 0.2010)",
                                          "transforms.Normalize",
                                          "the project's one CIFAR statistics (common/augment/"
                                          "presets.py: the source's std is a mean of per-image stds)")},
    run={"knn_every": 10},
)

STL10 = Recipe(
    description="ResNet-18 (ImageNet stem, 96 px) trained on STL-10's 5,000 labelled images",
    source=Source(title="kuangliu/pytorch-cifar main.py, carried to STL-10",
                  where=f"{KUANGLIU} main.py @ {KUANGLIU_COMMIT}",
                  reference="none published for STL-10"),
    settings=_settings(
        dataset=Setting("stl10", "cifar10", "the source trains on CIFAR-10",
                        "the supervised reference of the STL-10 SSL recipes"),
        train_split=Setting("train", "train", "STL-10's 5,000 labelled training images"),
        image_size=Setting(96, 32, "RandomCrop(32, padding=4)", "STL-10's native size"),
    ),
    facts={"schedule": Setting("cosine per step", "cosine per epoch", "CosineAnnealingLR(T_max=200)",
                               PER_STEP),
           "decayed_tensors": decays_every_parameter("optim.SGD(net.parameters(), ..., "
                                                     "weight_decay=5e-4)"),
           **_encoder_facts()},
    run={"knn_every": 10, "knn_train_split": "train", "knn_test_split": "test"},
)

RECIPES = {"quick": QUICK, "cifar10": CIFAR10, "stl10": STL10}
METHOD_KEYS: tuple[str, ...] = ()
