"""SimCLR's recipes (Chen et al. 2020), each with the provenance of every value.

- ``quick``: this project's CPU demo.
- ``cifar10``: the SimCLR authors' CIFAR-10 command, as their README gave it with the result it
  quotes (google-research/simclr at its first public commit).
- ``stl10``: the authors' ImageNet command (README at HEAD) carried to STL-10 with a ResNet-18.
"""

from common.recipes.provenance import NOT_IN_SOURCE, Recipe, Setting, Source

SIMCLR = "github.com/google-research/simclr"
FIRST_COMMIT = "be133b38fb21abb77403391dc6db3412edfe92f2"  # 2020-03-10, the README the 91% is from
HEAD_COMMIT = "383d4143fd8cf7879ae10f1046a9baeb753ff438"  # 2023-05-22
KNN_MONITOR = ("kNN monitor of the MoCo CIFAR demo (k 200, T 0.1), the project's shared protocol: "
               "the source reports a linear head instead")


def _head_facts(cited: str) -> dict[str, Setting]:
    return {
        "head_layout": Setting("Linear-BN-ReLU ... Linear-BN", "Linear-BN-ReLU ... Linear-BN",
                               f"{cited}: dense without bias + BN; the last BN without beta"),
        "head_init": Setting("normal(0, 0.01)", "normal(0, 0.01)",
                             f"{cited}: kernel_initializer random_normal stddev .01"),
        "zero_init_residual": Setting(True, True, "resnet.py: batch_norm_relu(init_zero=True) "
                                                  "closes every residual branch"),
        "input_normalization": Setting(
            "per-channel mean/std", "none (pixels in [0, 1])", "data_util.py",
            "every chapter normalises its inputs the same way (common/augment/presets.py); the "
            "first convolution is followed by BatchNorm, so a per-channel affine map of the input "
            "changes the network's function very little"),
        "batch_norm": Setting("per device", "global (cross-replica)", "--global_bn default True",
                              "the same on one device; torchrun --sync-bn synchronises it on GPUs"),
        "resnet_shortcut": Setting(
            "identity where shapes match", "1x1 conv + BN in each stage's first block",
            "resnet.py block_group: use_projection=True for the first block (stage 1 too)",
            "the project's one encoder (common/arch.py, torchvision's layout), the same in every "
            "chapter with portable weights: ResNet-18/34 lack the source's stage-1 projection"),
        "conv_init": Setting("He normal, fan-out", "variance scaling, fan-in, truncated normal",
                             "resnet.py conv2d_fixed_padding: variance_scaling_initializer()",
                             "the project's one encoder initialisation (common/arch.py); a "
                             "BatchNorm follows every convolution, so its scale hardly matters"),
        "loss_reduction": Setting(
            "mean over the 2N anchors", "loss_a + loss_b: 2x ours", "objective.py "
            "add_contrastive_loss", "the project's one reduction (common/losses.py, with its "
            "factor 2 to this source). With the same rate, LARS's trust ratio cancels the factor "
            "for the adapted weights, but the weight decay then counts double against the "
            "gradient, and the biases and BN parameters (not adapted) step at half the rate"),
    }


QUICK = Recipe(
    description="built-in `digits` (real handwriting), small ResNet-18, about 8 CPU minutes",
    source=Source(
        title="this project: chosen to learn visibly on 2 CPU cores in minutes",
        where="measured in pytorch_simclr/README.md",
        reference="none published (a demo, not a benchmark)",
    ),
    settings={
        "dataset": Setting("digits", "digits", "built in, offline"),
        "train_split": Setting("train", "train", "the labelled images, labels unused"),
        "arch": Setting("resnet18_small", "resnet18_small", "ResNet-18 at 1/4 width: CPU-sized"),
        "image_size": Setting(32, 32, "the digits are upscaled to 32 px"),
        "augment": Setting("simclr", "simclr", "SimCLR's CIFAR augmentation preset"),
        "epochs": Setting(40, 40, "kNN 0.620 -> 0.952 in 8 min on 2 CPU cores (README)"),
        "batch_size": Setting(128, 128, "11 steps per epoch of 1,442 images"),
        "optimizer": Setting("adamw", "adamw", "trains small batches fast without LARS's tuning"),
        "lr": Setting(2e-3, 2e-3, "AdamW rate that learns in 40 short epochs"),
        "lr_scaling": Setting("none", "none", "the rate is for this batch"),
        "weight_decay": Setting(1e-4, 1e-4, "AdamW's decoupled decay"),
        "warmup_epochs": Setting(2, 2, "5% of the run"),
        "temperature": Setting(0.2, 0.2, "a sharper softmax than 0.5 learns faster on 128 images"),
        "projection_dim": Setting(128, 128, "SimCLR's output width"),
        "projection_hidden_dim": Setting(256, 256, "twice the small encoder's 128-wide h"),
        "projection_layers": Setting(2, 2, "SimCLR v1's head"),
        "knn_k": Setting(20, 20, "a seventh of a class's 144 training images (k 200 would exceed a class)"),
        "knn_temperature": Setting(0.1, 0.1, "the kNN monitor's T"),
    },
    run={"knn_every": 10},
)

CIFAR10 = Recipe(
    description="ResNet-18 (CIFAR stem) on CIFAR-10, 1000 epochs: the SimCLR authors' command",
    source=Source(
        title="google-research/simclr README: pre-train on CIFAR-10 with a single GPU, then "
              "fine-tune a linear head",
        where=f"{SIMCLR} README.md and run.py @ {FIRST_COMMIT}",
        reference="'around 91% accuracy' (ResNet-18, 1000 epochs) after the README's linear-head "
                  "command: only a linear classifier on the frozen encoder is trained, SGD with "
                  "Nesterov momentum, base lr 0.1 (0.2 at batch 512), 100 epochs, no weight "
                  "decay, with the training crops and flips. Not comparable with solo-learn's "
                  "90.74% (another recipe, an online classifier) nor with lightly's kNN 0.848 "
                  "(200 epochs, SGD)",
    ),
    settings={
        "dataset": Setting("cifar10", "cifar10", "--dataset=cifar10"),
        "train_split": Setting("train", "train", "the 50,000 training images"),
        "arch": Setting("resnet18", "resnet18", "--resnet_depth=18 (CIFAR stem: --image_size=32)"),
        "image_size": Setting(32, 32, "--image_size=32"),
        "augment": Setting("simclr", "simclr", "--color_jitter_strength=0.5 --use_blur=False: the "
                                               "preset's 32 px variant"),
        "epochs": Setting(1000, 1000, "--train_epochs=1000"),
        "batch_size": Setting(512, 512, "--train_batch_size=512"),
        "optimizer": Setting("lars", "lars", "run.py --optimizer default 'lars'"),
        "lr": Setting(1.0, 1.0, "--learning_rate=1.0"),
        "lr_scaling": Setting("linear", "linear", "model_util.learning_rate_schedule: lr x B/256"),
        "weight_decay": Setting(1e-6, 1e-6, "--weight_decay=1e-6 (the README at HEAD says 1e-4, "
                                            "but its 91% was written for 1e-6)"),
        "momentum": Setting(0.9, 0.9, "run.py --momentum default 0.9"),
        "trust_coefficient": Setting(0.001, 0.001, "lars_optimizer.py EETA_DEFAULT"),
        "lars_variant": Setting("simclr", "simclr", "lars_optimizer.py: classic momentum, "
                                                   "eta ||w|| / ||g + wd w||, no clipping"),
        "warmup_epochs": Setting(10, 10, "run.py --warmup_epochs default 10"),
        "temperature": Setting(0.5, 0.5, "--temperature=0.5"),
        "projection_dim": Setting(128, 128, "run.py --head_proj_dim default 128"),
        "projection_hidden_dim": Setting(512, 512, "model_util.projection_head: the hidden layer is "
                                                   "as wide as h (512 for ResNet-18)"),
        "projection_layers": Setting(2, 2, "--head_proj_mode nonlinear, --num_nlh_layers 1: "
                                           "2 layers (SimCLR v1)"),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
    },
    facts=_head_facts("model_util.py linear_layer / projection_head"),
    run={"knn_every": 10},
)

STL10 = Recipe(
    description="ResNet-18 (ImageNet stem, 96 px) on STL-10 unlabeled, 100 epochs: the authors' "
                "ImageNet command at a single GPU's batch",
    source=Source(
        title="google-research/simclr README: pre-train on ImageNet",
        where=f"{SIMCLR} README.md (and tf2/run.py defaults) @ {HEAD_COMMIT}",
        reference="none published for STL-10 (the command's ImageNet ResNet-50 result is not "
                  "comparable)",
    ),
    settings={
        "dataset": Setting("stl10", "imagenet2012", "--dataset=imagenet2012",
                           "STL-10 is ImageNet-like (96 px photos, 100,000 unlabelled) and fits "
                           "one GPU"),
        "train_split": Setting("unlabeled", "train", "ImageNet's training split",
                               "STL-10's 100,000 unlabelled images are its pre-training split"),
        "arch": Setting("resnet18", "resnet50", "--resnet_depth default 50",
                        "ResNet-18 fits a single GPU at 96 px (the code takes --resnet_depth=18 too)"),
        "image_size": Setting(96, 224, "--image_size=224",
                              "STL-10's native size; the blur kernel scales with it (10% of the side)"),
        "augment": Setting("simclr", "simclr", "default colour strength 1.0 and blur: the preset's "
                                               "ImageNet variant"),
        "epochs": Setting(100, 100, "--train_epochs=100"),
        "batch_size": Setting(256, 4096, "--train_batch_size=4096",
                              "one GPU's batch; square-root scaling keeps the rate meaningful"),
        "optimizer": Setting("lars", "lars", "run.py --optimizer default 'lars'"),
        "lr": Setting(0.075, 0.075, "--learning_rate=0.075"),
        "lr_scaling": Setting("sqrt", "sqrt", "--learning_rate_scaling=sqrt ('allows it to train "
                                              "better when smaller batch size is used')"),
        "weight_decay": Setting(1e-4, 1e-4, "--weight_decay=1e-4 (the paper's section 2.3 says 1e-6)"),
        "momentum": Setting(0.9, 0.9, "run.py --momentum default 0.9"),
        "trust_coefficient": Setting(0.001, 0.001, "lars_optimizer.py EETA_DEFAULT"),
        "lars_variant": Setting("simclr", "simclr", "lars_optimizer.py"),
        "warmup_epochs": Setting(10, 10, "run.py --warmup_epochs default 10"),
        "temperature": Setting(0.1, 0.1, "--temperature=0.1"),
        "projection_dim": Setting(128, 128, "run.py --proj_out_dim default 128"),
        "projection_hidden_dim": Setting(512, 512, "model.py ProjectionHead: hidden layers as wide "
                                                   "as h (512 for ResNet-18)"),
        "projection_layers": Setting(3, 3, "run.py --num_proj_layers default 3 (SimCLR v2)"),
        "knn_k": Setting(200, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
        "knn_temperature": Setting(0.1, NOT_IN_SOURCE, "kNN monitor", KNN_MONITOR),
    },
    facts=_head_facts("tf2/model.py LinearLayer / ProjectionHead"),
    run={"knn_every": 10, "knn_train_split": "train", "knn_test_split": "test"},
)

RECIPES = {"quick": QUICK, "cifar10": CIFAR10, "stl10": STL10}
METHOD_KEYS = ("temperature", "projection_dim", "projection_hidden_dim", "projection_layers")
