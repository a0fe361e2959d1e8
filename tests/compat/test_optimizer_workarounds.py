"""megatron_ar.compat.optimizer: each megatron-core DistributedOptimizer defect (torch Adam) is
reproduced with its workaround left out; the test fails, naming the function to delete, once
upstream fixes it. With the workarounds, a resumed step equals the uninterrupted one bit for bit
(oracle: the same tiny Llama optimizer that never stopped). One spawned gloo rank."""
import os
import sys

import pytest

from megatron_ar.compat.optimizer import WORKAROUND_RANGE
from megatron_ar.compat.version import MCORE_VERSION, fmt, in_range, range_str
from megatron_ar.runtime import run_multiprocess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mar_compat_workers as workers  # noqa: E402

pytestmark = pytest.mark.multiproc

VERSION = fmt(MCORE_VERSION)


def _fixed(what: str, fn: str) -> str:
    return f"upstream fixed {what} in megatron-core {VERSION}: remove megatron_ar.compat.optimizer.{fn}"


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    if not in_range(MCORE_VERSION, *WORKAROUND_RANGE):
        pytest.skip(f"megatron-core {VERSION} is outside the workarounds' range "
                    f"{range_str(*WORKAROUND_RANGE)}; re-check the defects for this version")
    (out,) = run_multiprocess(workers.optimizer_defects, 1, str(tmp_path_factory.mktemp("opt")),
                              timeout=900)
    return out


def test_fresh_optimizer_cannot_build_a_loading_state_dict(obs):
    """DistributedOptimizer.state_dict asserts one common Adam step over an empty state."""
    assert obs["fresh_error"] is not None, _fixed(
        "sharded_state_dict(is_loading=True) of a DistributedOptimizer that never stepped",
        "init_optimizer_state")
    assert obs["fresh_error"].startswith("AssertionError"), obs["fresh_error"]
    assert obs["fresh_with_workaround"] == "ok"


def test_reshardable_load_drops_step(obs):
    """_set_main_param_and_optimizer_states indexes tensors['step'] that the loader dropped."""
    assert obs["step_copy_error"] is not None, _fixed(
        "KeyError 'step' when loading a fully_reshardable checkpoint with torch Adam",
        "patch_step_copy")
    assert obs["step_copy_error"] == "KeyError: 'step'", obs["step_copy_error"]


def test_load_state_dict_shares_one_step_tensor(obs):
    """load_state_dict gives every parameter the same step tensor; torch Adam then increments
    it once per parameter: 3 saved steps + 1 step -> 3 + (number of parameters)."""
    n = obs["n_states"]
    assert n > 1
    assert obs["shared_steps_after_load"] == [3.0]
    assert obs["shared_step_ids"] == 1, _fixed(
        "DistributedOptimizer.load_state_dict sharing one 'step' tensor between parameters",
        "unshare_step_tensors")
    assert obs["shared_steps_after_step"] == [3.0 + n]
    assert any(not a.equal(b) for a, b in zip(obs["shared_step4"], obs["reference_step4"]))


def test_workarounds_make_resume_bit_exact(obs):
    assert obs["unshared_step_ids"] == obs["n_states"]
    assert obs["unshared_steps_after_step"] == [4.0]
    for got, ref in zip(obs["unshared_step4"], obs["reference_step4"]):
        assert got.equal(ref)
