"""A view's per-image parameters as dense arrays of fixed shape: what a batched back-end applies.

``ViewParams`` (``sampler.py``) say what each image gets in the terms of the spec (factors, the
jitter order, flags). A back-end that runs every op on the whole batch wants them folded into the
few arrays it computes with (:func:`dense_view_params`): the colour jitter and the grayscale as one
weighted blend per jitter position (``x <- clamp(a x + b m + c l)``, m the mean of the image's luma
l: brightness f is (f, 0, 0), contrast (f, 1 - f, 0), saturation (f, 0, 1 - f), grayscale (0, 0, 1),
nothing (1, 0, 0)), the hue shift of each position, and the blur and solarize flags. The PyTorch and
TensorFlow batched paths apply this folding (the Keras one, its own dense matrix of the same
parameters, ``keras_byol.augment.dense_params``).
"""

from __future__ import annotations

import numpy as np

from .sampler import JITTER_OPS, ViewParams

SOLARIZE_NEVER = 2.0
"""A solarize threshold no pixel in [0, 1] reaches: the per-image threshold of images it skips."""

BLEND_WEIGHTS = {  # the blend (a, b, c) of each jitter op with factor f
    "brightness": lambda f: (f, 0.0 * f, 0.0 * f),
    "contrast": lambda f: (f, 1.0 - f, 0.0 * f),
    "saturation": lambda f: (f, 0.0 * f, 1.0 - f),
}


def dense_view_params(params: ViewParams) -> dict[str, np.ndarray]:
    """The parameters of N views as arrays of fixed shape, batch axis first.

    - ``crop_box`` float32 (N, 4): top, left, height, width (float32 holds these integers exactly);
    - ``flip`` bool (N,);
    - ``blend`` float32 (N, 5, 3): at jitter position 0..3 the weights (a, b, c) of the
      brightness, contrast or saturation the image gets there (:func:`blend`), (1, 0, 0) if it gets
      nothing or the hue there; position 4 is the grayscale, (0, 0, 1) where it fires;
    - ``hue`` float32 (N, 4): the hue shift at each jitter position, 0 where none;
    - ``hue_position`` int32 (N,): the jitter position of the image's hue shift (where its order
      puts the hue, whether it fires or not), so a back-end can compute the costly hue once: the
      blends before it, the hue, the blends after it (the blend at this position is (1, 0, 0));
    - ``blur`` bool (N,) and ``blur_sigma`` float32 (N,);
    - ``solarize`` bool (N,).

    The jitter order and the "jitter fires" flag are folded into ``blend`` and ``hue``. As in the
    reference, an adjustment whose factor is neutral is skipped (given neutral weights).
    """
    n = len(params)
    blend_weights = np.zeros((n, 5, 3))
    blend_weights[:, :, 0] = 1.0
    hue = np.zeros((n, 4))
    for op_index, name in enumerate(JITTER_OPS):
        factor = getattr(params, name)
        for position in range(4):
            fires = params.jitter & (params.jitter_order[:, position] == op_index)
            if name == "hue":
                hue[:, position] = np.where(fires, factor, hue[:, position])
            else:
                fires &= factor != 1.0
                blend_weights[fires, position] = np.stack(BLEND_WEIGHTS[name](factor[fires]), axis=1)
    blend_weights[params.grayscale, 4] = (0.0, 0.0, 1.0)
    return {
        "crop_box": params.crop_box.astype(np.float32),
        "flip": params.flip.astype(bool),
        "blend": blend_weights.astype(np.float32),
        "hue": hue.astype(np.float32),
        "hue_position": np.argmax(params.jitter_order == JITTER_OPS.index("hue"), axis=1).astype(np.int32),
        "blur": params.blur.astype(bool),
        "blur_sigma": params.blur_sigma.astype(np.float32),
        "solarize": params.solarize.astype(bool),
    }
