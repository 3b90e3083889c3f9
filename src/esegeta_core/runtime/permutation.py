"""The permutation engine: permutation feature importance computed on the model's device.

Permutation importance (Breiman 2001, https://doi.org/10.1023/A:1010933404324; Fisher
et al. 2019, https://arxiv.org/abs/1801.01489) shuffles one feature across the items of
a batch and attributes the score drop of every item to that feature's elements. Captum
0.9's ``FeaturePermutation`` builds each pass by repeating the whole batch once per
feature and blending every copy with its permuted copy through full-size masks, and
keeps the model's whole output. This engine shares the ablation engine's passes
(:func:`~esegeta_core.runtime.ablation.perturbed_scores`): each perturbed input is built
in one reused buffer on the input's device, its region copied from the item it is
swapped with; only the target scores are kept; the unperturbed inputs ride in the first
pass; the passes go through the core's pass planner.

The maps equal Captum's with the same torch seed: the permutations are Captum's draws,
one ``torch.randperm(B)`` per feature id of the mask in increasing order, redrawn while
it leaves every item in place, all drawn before the first pass (Captum draws them in the
same order whatever its ``perturbations_per_eval``, so the plan of the passes changes
nothing). An item a permutation leaves in place is its own unperturbed input: its drop
is zero and it takes no pass (Captum scores it again, getting zero up to the rounding
of a different batch).
"""

from __future__ import annotations

import torch

from esegeta_core.errors import InvalidParamsError
from esegeta_core.runtime.ablation import FeatureRegions, perturbed_scores
from esegeta_core.runtime.perturb_args import Model, Target, check_feature_mask, check_inputs

WHO = "Feature permutation"


def draw_permutations(items: int, features: int) -> list[list[int]]:
    """One permutation of ``range(items)`` per feature, drawn as Captum's
    ``_permute_feature`` draws them from torch's global generator: ``torch.randperm``,
    again while it is the identity."""
    identity = list(range(items))
    perms = []
    for _ in range(features):
        perm = torch.randperm(items).tolist()
        while perm == identity:  # compared on the host, as lists
            perm = torch.randperm(items).tolist()
        perms.append(perm)
    return perms


def feature_permutation(
    model: Model,
    inputs: torch.Tensor,
    target: Target,
    *,
    feature_mask: torch.Tensor,
    batch_size: int,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Permutation importance maps ``(B, C, *spatial)`` in the model's output dtype.

    For every feature id of ``feature_mask`` (``(B or 1, C or 1, *spatial)`` integer
    ids, broadcastable to the inputs; negative ids are features too, as in Captum), item
    ``i``'s elements of that feature take the values of item ``perm[i]`` and every such
    element of item ``i`` gets the drop of ``i``'s target score. ``B`` must be at least
    2. ``batch_size`` is the most perturbed inputs per pass (``perturbations_per_eval``
    times the batch in Captum's terms); under ``explain(auto_batch=True)`` the planner
    sizes the passes. The random draws come first (see the module), so the map does not
    depend on the passes; a model that draws random numbers itself (dropout in training
    mode) would see another generator state than under Captum. ``initial``: the
    ``(B,)`` target scores of the inputs themselves when the caller has them already
    (from the prediction pass), which then do not run again.
    """
    x = check_inputs(inputs, WHO)
    b = x.shape[0]
    if b < 2:
        raise InvalidParamsError(
            f"{WHO}: a feature is permuted across the batch items; give a batch of at "
            f"least 2 items (got {b})."
        )
    mask = check_feature_mask(feature_mask, x, WHO)
    regions = FeatureRegions(mask)
    features = torch.unique(mask).tolist()
    perms = draw_permutations(b, len(features))
    places = [{f: r for r, f in enumerate(row.ids)} for row in regions.rows]
    pairs: list[tuple[int, int]] = []
    sources: dict[tuple[int, int], int] = {}
    for feature, perm in zip(features, perms, strict=True):
        for item in range(b):
            region = places[regions.row(item)].get(feature)
            if region is None or perm[item] == item:
                continue  # the feature is not in this item, or the item keeps its own
            pairs.append((item, region))
            sources[(item, region)] = perm[item]

    def fill(item: int, region: int) -> torch.Tensor:
        return x[sources[(item, region)]]

    initial, scores = perturbed_scores(
        model, x, target, regions, pairs, batch_size, fill, who=WHO, kind="forward",
        initial=initial,
    )  # fmt: skip
    items = torch.tensor([i for i, _ in pairs], device=x.device, dtype=torch.long)
    return regions.feature_map(x, pairs, initial[items] - scores)
