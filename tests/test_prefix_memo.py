"""The prefix memo: a forward pass replayed from its record up to one layer gives the
computed outputs, skips the work before the layer, and steps aside where it cannot
apply (a control flow that changes, outputs it cannot copy)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from esegeta_core.layer_replay import replaced_scores
from esegeta_core.prefix_memo import PrefixMemo, PrefixMismatchError


class ConvCount:
    """Counts the item-convolutions computed (batch size per call) while it is on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items = 0
        for cls in (nn.Conv2d, nn.Conv3d):
            original = cls._conv_forward

            def counted(conv, x, *args, _original=original):  # type: ignore[no-untyped-def]
                self.items += x.shape[0]
                return _original(conv, x, *args)

            monkeypatch.setattr(cls, "_conv_forward", counted)


def _replayed(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[PrefixMemo, list]:
    memo = PrefixMemo(model, layer)
    outs = []
    with torch.no_grad():
        for _ in range(3):
            with memo.running():
                outs.append(model(x))
    return memo, outs


@pytest.mark.parametrize("path", ["layer3", "layer3.1.conv2", "layer2.0.downsample", "fc"])
def test_a_replay_equals_the_computed_pass_and_skips_the_prefix(path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        want = model(x)
    count = ConvCount(monkeypatch)
    with torch.no_grad():
        model(x)
    whole = count.items
    memo, outs = _replayed(model, model.get_submodule(path), x)
    assert memo.usable and memo.recorded
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    replays = count.items - 2 * whole  # the recorded run and the computed one above
    assert replays < 2 * whole  # the two replays skipped the layers before `path`
    assert "forward" not in vars(model.conv1)  # every forward restored


class InPlace(nn.Module):
    """A module output changed in place by code outside modules after it is recorded
    (as BasicBlock's ``out += identity`` after ``bn2`` when ``downsample`` is ablated)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.act = nn.ReLU()  # one module called before and after the layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.a(x))
        out += self.b(x)  # in place on a recorded output; b is the layer
        return self.act(out).mean((2, 3))


def test_outputs_changed_in_place_and_shared_modules_replay_exactly() -> None:
    torch.manual_seed(0)
    model = InPlace().eval()
    x = torch.rand(1, 2, 6, 6)
    with torch.no_grad():
        want = model(x)
    memo, outs = _replayed(model, model.b, x)
    assert memo.usable
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=0)


class Alternating(nn.Module):
    """A control flow that changes between runs: the replay cannot match the record."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.layer = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.a(x) if self.calls % 2 else torch.tanh(self.b(x))
        return self.layer(h)


def test_a_replay_that_does_not_match_the_record_raises() -> None:
    model = Alternating().eval()
    memo = PrefixMemo(model, model.layer)
    x = torch.rand(1, 3)
    with torch.no_grad(), memo.running():
        model(x)
    with pytest.raises(PrefixMismatchError), torch.no_grad(), memo.running():
        model(x)
    assert "forward" not in vars(model.a) and "forward" not in vars(model.b)


class Twins(nn.Module):
    """The same function computed by one of two identical modules, alternately or from
    the ``switch_at``-th run on: the scores are deterministic, the module calls are not
    the same from run to run."""

    def __init__(self, switch_at: int | None) -> None:
        super().__init__()
        self.a, self.layer, self.head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.twin = nn.Linear(3, 3)
        self.twin.load_state_dict(self.a.state_dict())
        self.calls, self.switch_at = 0, switch_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        first = self.calls % 2 if self.switch_at is None else self.calls < self.switch_at
        h = (self.a if first else self.twin)(x)
        return self.head(self.layer(h) + h)


@pytest.mark.parametrize("switch_at", [None, 4])
def test_replaced_scores_do_not_trust_a_memo_that_does_not_replay(switch_at) -> None:
    """Layer replay checks a replay against its record (alternating calls fail that
    check) and catches a mismatch in later passes (calls that change on the 4th run):
    the scores still equal whole passes."""
    torch.manual_seed(0)
    model = Twins(switch_at).eval()
    x = torch.rand(2, 3)
    t = torch.tensor([0, 1])
    with torch.no_grad():
        h = model.a(x)
        original = model.layer(h)
        reference = model.head(original + h).gather(1, t[:, None]).squeeze(1)

    def build(item: int, keys: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
        rows = original[item].repeat(len(keys), 1) if out is None else out
        rows.copy_(original[item].expand(len(keys), -1))
        rows[torch.arange(len(keys)), torch.tensor(keys)] = 0
        return rows

    rows = [(b, k) for b in range(2) for k in range(3)]
    got = replaced_scores(model, model.layer, x, original, t, reference, rows, build, chunk=1)
    with torch.no_grad():
        want = torch.stack([model.head(build(b, [k]) + h[b])[0, t[b]] for b, k in rows])
    torch.testing.assert_close(got, want)


class Opaque(nn.Module):
    def forward(self, x: torch.Tensor) -> object:
        return type("Box", (), {"value": x})()


class UsesOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box, self.layer = Opaque(), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.box(x).value)


def test_an_output_it_cannot_copy_turns_the_memo_off() -> None:
    model = UsesOpaque().eval()
    memo = PrefixMemo(model, model.layer)
    x = torch.rand(1, 3)
    with torch.no_grad():
        want = model(x)
        for _ in range(2):
            with memo.running():
                torch.testing.assert_close(model(x), want)
    assert not memo.usable


def test_an_instance_forward_is_restored_as_it_was() -> None:
    model = InPlace().eval()
    own = model.a.forward
    model.a.forward = own  # an instance attribute, as some wrappers set
    _replayed(model, model.b, torch.rand(1, 2, 6, 6))
    assert vars(model.a)["forward"] is own
    assert "forward" not in vars(model.b)


def test_a_run_that_never_reaches_the_layer_computes() -> None:
    model = InPlace().eval()
    unused = nn.Linear(2, 2)
    model.unused = unused
    memo = PrefixMemo(model, unused)
    with torch.no_grad(), memo.running():
        model(torch.rand(1, 2, 6, 6))
    assert not memo.usable and not memo.recorded


def test_a_scripted_module_rules_the_memo_out_and_every_forward_is_restored() -> None:
    """A ScriptModule runs its forward in C++, not through the attribute the memo
    wraps: the memo steps aside (the runs compute) and leaves no wrapper behind."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model = nn.Sequential(head, torch.jit.script(nn.Conv2d(4, 4, 3, padding=1)), nn.Flatten())
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    memo, outs = _replayed(model, model[1], x)
    assert not memo.usable
    for out in outs:
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert all("forward" not in vars(m) for m in (model, head, head[0], head[1]))
