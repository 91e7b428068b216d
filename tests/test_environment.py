"""The pinned frameworks import together and run, so a broken pairing fails CI, not a student's first run.

The classic trap (see requirements.txt): a local CPU-only torch wheel that the index's torchvision was
not built against; then `import torchvision` fails with "operator torchvision::nms does not exist".
"""

import torch  # the pinned order: torch and torchvision first (tests/conftest.py does it too), then TF
import torchvision


def test_all_frameworks_import_and_run_in_one_process():
    """In the test process itself, which imported torch and torchvision first (tests/conftest.py)."""
    import jax.numpy as jnp
    import keras
    import tensorflow as tf

    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    assert list(logits.shape) == [2, 10] and bool(torch.isfinite(logits).all())
    assert kept.tolist() == [0]  # the two boxes overlap with IoU 0.68 > 0.5
    assert float(tf.reduce_sum(tf.ones((3, 4)))) == 12.0
    assert float(jnp.sum(jnp.arange(5))) == 10.0
    assert int(keras.__version__.split(".")[0]) == 3
