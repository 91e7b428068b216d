"""BYOL's recipes (Grill et al. 2020), each with the provenance of every value.

- ``quick``: this project's CPU demo.
- ``cifar10``: solo-learn's CIFAR-10 BYOL configuration (the best-documented CIFAR BYOL recipe with a
  published result; the BYOL authors published none for CIFAR pre-training).
- ``stl10``: the BYOL authors' configuration (deepmind-research ``byol/configs/byol.py``) with its
  100-epoch preset, carried to STL-10 with a ResNet-18.

The BYOL configs scale three values with the training budget (:data:`DEEPMIND_PRESETS`): the base
learning rate, the weight decay and the target network's base EMA rate tau0.
"""

from common.recipes.provenance import NOT_IN_SOURCE, Recipe, Setting, Source

SOLO = "github.com/vturrisi/solo-learn"
SOLO_COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"  # HEAD 2026-04-22; byol.yaml @ 9f60a1b2
SOLO_RESULT_COMMIT = "fca55e3fc41072123ba3f5f69c980435b1a1d356"  # 2021-07-09, "Updating results":
# the README commit that added the CIFAR-10 figures (its column "Acc@1 (online)"; later READMEs
# dropped "(online)") and bash_files/pretrain/cifar/byol.sh, the run that measured 92.58
DEEPMIND = "github.com/deepmind/deepmind-research"
DEEPMIND_COMMIT = "d8df4155dc72fc3dfff9f857412168993348ca23"  # byol/ unchanged since 6fdfc754

DEEPMIND_PRESETS = {  # epochs -> (base lr, weight decay, tau0): byol/configs/byol.py
    40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996),
}
KNN_MONITOR = "the MoCo CIFAR demo's kNN monitor, the project's shared protocol"


def _facts(head: Setting, zero_init_residual: Setting) -> dict[str, Setting]:
    return {
        "head_layout": head,
        "target_bn_statistics": Setting(
            "skip", "skip", "the target network runs in training mode with its own BatchNorm "
                            "statistics; the EMA covers parameters only"),
        "zero_init_residual": zero_init_residual,
    }


QUICK = Recipe(
    description="built-in `digits`, small ResNet-18, about 3 CPU minutes (TensorFlow backend)",
    source=Source(title="this project: chosen to learn visibly on 2 CPU cores in minutes",
                  where="measured in keras_byol/README.md",
                  reference="none published (a demo, not a benchmark)"),
    settings={
        "dataset": Setting("digits", "digits", "built in, offline"),
        "train_split": Setting("train", "train", "the labelled images, labels unused"),
        "arch": Setting("resnet18_small", "resnet18_small", "ResNet-18 at 1/4 width: CPU-sized"),
        "image_size": Setting(32, 32, "the digits are upscaled to 32 px"),
        "augment": Setting("byol", "byol", "BYOL's asymmetric CIFAR preset"),
        "epochs": Setting(4, 4, "kNN 0.606 -> 0.718 in 3 min 11 s on 2 CPU cores (README); 0.727 "
                                "after 2 epochs already"),
        "batch_size": Setting(128, 128, "11 steps per epoch of 1,442 images"),
        "optimizer": Setting("adamw", "adamw", "trains small batches fast without LARS's tuning"),
        "lr": Setting(2e-3, 2e-3, "AdamW rate of the other quick recipes"),
        "lr_scaling": Setting("none", "none", "the rate is for this batch"),
        "weight_decay": Setting(1e-4, 1e-4, "AdamW's decoupled decay"),
        "warmup_epochs": Setting(0.5, 0.5, "the first 6 steps"),
        "projection_dim": Setting(64, 64, "BYOL's 256 scaled to the small encoder's 128-wide h"),
        "projection_hidden_dim": Setting(256, 256, "BYOL's 4096 scaled down"),
        "predictor_hidden_dim": Setting(256, 256, "as the projector's"),
        "target_momentum": Setting(0.9, 0.9, "a target that follows within ~10 steps: the run has 44; "
                                             "the BYOL configs' shortest preset, 0.97 for 40 ImageNet "
                                             "epochs, lifted kNN to 0.69 in 6 epochs here, 0.9 to "
                                             "0.72 in 4"),
        "knn_k": Setting(20, 20, "a seventh of a class's 144 training images (k 200 would exceed a class)"),
        "knn_temperature": Setting(0.1, 0.1, "the kNN monitor's T"),
    },
    run={"knn_every": 2},
)

CIFAR10 = Recipe(
    description="ResNet-18 (CIFAR stem) on CIFAR-10, 1000 epochs: solo-learn's BYOL configuration",
    source=Source(
        title="solo-learn scripts/pretrain/cifar/byol.yaml (+ augmentations/asymmetric.yaml, "
              "solo/args/pretrain.py)",
        where=f"{SOLO} @ {SOLO_COMMIT}",
        reference=f"92.58% top-1 after 1000 epochs (README @ {SOLO_RESULT_COMMIT[:7]}, column 'Acc@1 "
                  "(online)'), by "
                  "solo-learn's online linear classifier (trained on the augmented pre-training "
                  "views, stop-gradient), not by our logistic-regression probe or kNN monitor. It was "
                  f"measured with bash_files/pretrain/cifar/byol.sh @ {SOLO_RESULT_COMMIT[:7]}, the "
                  "values of byol.yaml "
                  "but two: its warm-up started at 0.003 (--warmup_start_lr default), and its "
                  "warm-up + cosine stepped once per epoch (a Lightning scheduler's default interval)",
    ),
    settings={
        "dataset": Setting("cifar10", "cifar10", "data: dataset: cifar10"),
        "train_split": Setting("train", "train", "the 50,000 training images"),
        "arch": Setting("resnet18", "resnet18", "backbone: name: resnet18 (CIFAR stem)"),
        "image_size": Setting(32, 32, "crop_size: 32"),
        "augment": Setting("byol", "byol", "asymmetric.yaml: jitter 0.4/0.4/0.2/0.1 p 0.8, gray 0.2, "
                                           "no blur, solarize 0.0 / 0.2, flip"),
        "epochs": Setting(1000, 1000, "max_epochs: 1000"),
        "batch_size": Setting(256, 256, "batch_size: 256 (one device)"),
        "optimizer": Setting("lars", "lars", "optimizer: name: lars"),
        "lr": Setting(1.0, 1.0, "lr: 1.0"),
        "lr_scaling": Setting("linear", "linear", "solo/args/pretrain.py: lr x batch x devices / 256"),
        "weight_decay": Setting(1e-5, 1e-5, "weight_decay: 1e-5"),
        "momentum": Setting(0.9, 0.9, "solo/args/pretrain.py default 0.9"),
        "trust_coefficient": Setting(0.02, 0.02, "eta: 0.02"),
        "lars_variant": Setting("solo-learn", "solo-learn", "clip_lr: True, exclude_bias_n_norm: "
                                                           "True (solo/utils/lars.py)"),
        "warmup_epochs": Setting(10, 10, "solo/methods/base.py default warmup_epochs 10"),
        "projection_dim": Setting(256, 256, "proj_output_dim: 256"),
        "projection_hidden_dim": Setting(4096, 4096, "proj_hidden_dim: 4096"),
        "predictor_hidden_dim": Setting(4096, 4096, "pred_hidden_dim: 4096"),
        "target_momentum": Setting(0.99, 0.99, "base_tau: 0.99 (final_tau: 1.0)"),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
    },
    facts={
        **_facts(Setting("Linear-BN-ReLU-Linear (no bias last)", "Linear-BN-ReLU-Linear (biases)",
                         "solo/methods/byol.py projector and predictor: nn.Linear defaults",
                         "the BYOL authors' one head for every recipe (deepmind-research "
                         "byol/utils/networks.py: the last hk.Linear with_bias=False)"),
                 Setting(True, False, "solo-learn's backbone: torchvision resnet18() default",
                         "the project's one encoder initialisation (common/arch.py)")),
        "head_init": Setting("truncated normal, std 1/sqrt(fan_in)", "PyTorch nn.Linear default",
                             "solo/methods/byol.py: no explicit initialisation",
                             "the BYOL authors' hk.Linear default (keras_byol/model.py build_mlp)"),
        "target_init": Setting("independent draw", "copy of the online network",
                               "solo/utils/momentum.py initialize_momentum_params",
                               "deepmind-research: 'Online and target parameters are initialized "
                               "using different rngs' (keras_byol/byol.py)"),
        "warmup_start": Setting(0.0, 3e-5, "solo/methods/base.py warmup_start_lr 3e-5",
                                "the project's one warm-up starts at 0 (google-research/simclr's); "
                                "3e-5 is 0.003% of the peak"),
        "cifar_stem_padding": Setting(1, 2, "solo/methods/base.py: Conv2d(3, 64, 3, 1, padding=2)",
                                      "the usual padding 1 of the SimCLR and MoCo CIFAR stems: "
                                      "solo-learn's 2 makes 34x34 maps"),
    },
    run={"knn_every": 10},
)

_LR, _WD, _TAU = DEEPMIND_PRESETS[100]
STL10 = Recipe(
    description="ResNet-18 (ImageNet stem, 96 px) on STL-10 unlabeled, 100 epochs: the BYOL "
                "authors' configuration and 100-epoch preset",
    source=Source(
        title="deepmind-research byol/configs/byol.py (100-epoch preset) and byol/main_loop.py",
        where=f"{DEEPMIND} byol/configs/byol.py @ {DEEPMIND_COMMIT}",
        reference="none published for STL-10 (the configs' results are ImageNet, ResNet-50)",
    ),
    settings={
        "dataset": Setting("stl10", "imagenet", "the configs train on ImageNet",
                           "STL-10 is ImageNet-like (96 px photos, 100,000 unlabelled) and fits "
                           "one GPU"),
        "train_split": Setting("unlabeled", "train", "ImageNet's training split",
                               "STL-10's 100,000 unlabelled images are its pre-training split"),
        "arch": Setting("resnet18", "resnet50", "encoder_class='ResNet50'",
                        "ResNet-18 fits a single GPU at 96 px"),
        "image_size": Setting(96, 224, "224 px crops", "STL-10's native size"),
        "augment": Setting("byol", "byol", "utils/augmentations.py: blur 1.0 / 0.1, solarize 0 / 0.2"),
        "epochs": Setting(100, 100, "the 100-epoch preset"),
        "batch_size": Setting(256, 4096, "--batch_size default 4096",
                              "one GPU's batch; the rate scales linearly as in the source"),
        "optimizer": Setting("lars", "lars", "byol/utils/optimizers.py lars"),
        "lr": Setting(_LR, 0.45, "_LR_PRESETS[100] = 0.45"),
        "lr_scaling": Setting("linear", "linear", "schedules.py: base_learning_rate x batch / 256"),
        "weight_decay": Setting(_WD, 1e-6, "_WD_PRESETS[100] = 1e-6"),
        "momentum": Setting(0.9, 0.9, "lars momentum=.9"),
        "trust_coefficient": Setting(0.001, 0.001, "lars eta=1e-3"),
        "lars_variant": Setting("byol", "byol", "optimizers.py: decayed update, trust ratio, then "
                                                "momentum, then the rate; no clipping"),
        "warmup_epochs": Setting(10, 10, "warmup_steps = 10 x images per epoch / batch"),
        "projection_dim": Setting(256, 256, "projector_output_size=256"),
        "projection_hidden_dim": Setting(4096, 4096, "projector_hidden_size=4096"),
        "predictor_hidden_dim": Setting(4096, 4096, "predictor_hidden_size=4096"),
        "target_momentum": Setting(_TAU, 0.99, "_EMA_PRESETS[100] = 0.99"),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
    },
    facts=_facts(Setting("Linear-BN-ReLU-Linear (no bias last)", "Linear-BN-ReLU-Linear (no bias last)",
                         "byol/utils/networks.py MLP: hk.Linear(output, with_bias=False)"),
                 Setting(True, True, "haiku ResNet50's bottleneck blocks: the last BatchNorm "
                                     "scale_init=jnp.zeros (haiku's basic blocks start it at 1)")),
    run={"knn_every": 10, "knn_train_split": "train", "knn_test_split": "test"},
)

RECIPES = {"quick": QUICK, "cifar10": CIFAR10, "stl10": STL10}
METHOD_KEYS = ("projection_dim", "projection_hidden_dim", "predictor_hidden_dim", "target_momentum")
