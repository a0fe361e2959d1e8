"""load_module_state: strict except for ``_extra_state`` (oracle: torch's own strict load)."""
import pytest
import torch

from megatron_ar.checkpoint.extra_state import load_module_state

pytestmark = pytest.mark.unit


class _WithExtra(torch.nn.Linear):
    def __init__(self):
        super().__init__(3, 2)
        self.meta = {"step": 7}

    def get_extra_state(self):
        return dict(self.meta)

    def set_extra_state(self, state):
        self.meta = state


def test_missing_extra_state_keeps_the_module_state():
    src, dst = _WithExtra(), _WithExtra()
    src.meta = {"step": 1}
    sd = {k: v for k, v in src.state_dict().items() if k != "_extra_state"}
    with pytest.raises(RuntimeError, match="_extra_state"):
        dst.load_state_dict(sd, strict=True)  # what a strict load does without this helper
    load_module_state(dst, sd)
    assert dst.meta == {"step": 7} and torch.equal(dst.weight, src.weight)
    load_module_state(dst, src.state_dict())
    assert dst.meta == {"step": 1}


def test_other_missing_or_unexpected_keys_still_fail_by_name():
    src, dst = _WithExtra(), _WithExtra()
    sd = src.state_dict()
    del sd["bias"]
    with pytest.raises(RuntimeError, match=r"ckpt-x: .*missing key\(s\) \['bias'\]"):
        load_module_state(dst, sd, where="ckpt-x")
    sd = dict(src.state_dict(), stray=torch.zeros(1))
    with pytest.raises(RuntimeError, match=r"unexpected key\(s\) \['stray'\]"):
        load_module_state(dst, sd)
