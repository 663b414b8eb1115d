"""A small pretrained flow-matching model of handwritten digits that ships with the library: the
main job (timers, integrators, guidance, inverse problems) on learned images, on a CPU, with no
download.

```python
from diffuse_eqx.models import digits

model = digits.pretrained()
pred = model.predictor(label=3, guidance=2.0)
den = dx.Denoiser(pred, dx.Heun(), dx.FluxTimer(n_steps=16, shift=1.0), x0_shape=model.x0_shape)
images = model.to_uint8(den.generate(key, 64).samples)  # (64, 8, 8) uint8
```
"""

import functools
from pathlib import Path

from .data import classify as classify, load_data as load_data, reference_classifier as reference_classifier
from .model import (
    IMAGE_SHAPE as IMAGE_SHAPE,
    N_CLASSES as N_CLASSES,
    NULL_LABEL as NULL_LABEL,
    DigitsConfig as DigitsConfig,
    DigitsModel as DigitsModel,
    DigitsUNet as DigitsUNet,
    Labelled as Labelled,
    guided as guided,
)


#: The folder of the shipped weights (`config.json`, `weights.safetensors`).
WEIGHTS = Path(__file__).parent / "weights"


@functools.cache
def pretrained() -> DigitsModel:
    """The shipped model (`weights/`, trained by `examples/train_digits.py`), loaded once per
    process through the checked safetensors reader; no download."""
    return DigitsModel.load(WEIGHTS)
