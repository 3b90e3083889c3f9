"""esegeta-cnnvis: the CNN-visualization family re-implemented in plain PyTorch.

Batched, N-dimensional (2D and 3D), on the model's device, differentiable on request
(``create_graph``). Gradient methods live in ``gradients.py``, CAMs in ``cams.py``,
layer visualizations in ``visualizations.py``, RISE in ``rise.py``; every parameter
model in ``params.py``.
"""

from __future__ import annotations

from esegeta_core import Explainer, hookimpl


@hookimpl
def esegeta_register_methods() -> list[type[Explainer]]:
    from esegeta_cnnvis.cams import CAM_METHODS
    from esegeta_cnnvis.gradients import GRADIENT_METHODS
    from esegeta_cnnvis.rise import RISE_METHODS
    from esegeta_cnnvis.visualizations import VISUALIZATION_METHODS

    return [*GRADIENT_METHODS, *CAM_METHODS, *VISUALIZATION_METHODS, *RISE_METHODS]
