"""The pinned frameworks import together and run, so a broken pairing fails CI, not a student's first run.

The classic trap (see requirements.txt): a local CPU-only torch wheel that the index's torchvision was
not built against; then `import torchvision` fails with "operator torchvision::nms does not exist".
"""

import subprocess
import sys
import textwrap


def test_all_frameworks_import_and_run_in_one_process():
    script = textwrap.dedent(
        """
        import json, numpy as np
        import torch, torchvision
        import tensorflow as tf
        import jax, jax.numpy as jnp
        import keras

        model = torchvision.models.resnet18(num_classes=10).eval()
        with torch.no_grad():
            logits = model(torch.zeros(2, 3, 32, 32))
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
        print(json.dumps({
            "torch_logits": list(logits.shape),
            "nms_kept": kept.tolist(),
            "tf_sum": float(tf.reduce_sum(tf.ones((3, 4)))),
            "jax_sum": float(jnp.sum(jnp.arange(5))),
            "keras_major": int(keras.__version__.split(".")[0]),
        }))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch_logits"] == [2, 10]
    assert result["nms_kept"] == [0]  # the two boxes overlap with IoU 0.68 > 0.5
    assert result["tf_sum"] == 12.0
    assert result["jax_sum"] == 10.0
    assert result["keras_major"] == 3
