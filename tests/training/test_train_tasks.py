"""megatron_ar.training.tasks: last-word cloze items checked against the texts they come from
(real Quran verses), and read back by the trainer's own task loader (eval.load_mc_task)."""
import pytest

from megatron_ar.training.eval import load_mc_task
from megatron_ar.training.tasks import build_cloze_items, write_task

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def verses():
    import material

    return material.quran_lines("simple-clean")


def test_cloze_items_are_the_texts_without_their_last_word(verses):
    items = build_cloze_items(verses, 50, num_choices=4, seed=3)
    assert len(items) == 50
    texts = {" ".join(v.split()) for v in verses}
    endings = {v.split()[-1] for v in verses if len(v.split()) >= 4}
    for it in items:
        gold = it["choices"][it["gold"]]
        assert it["query"] + gold in texts  # the choice carries the leading space
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert all(c.startswith(" ") and c[1:] in endings for c in it["choices"])
        assert len(it["query"].split()) >= 3
    # one seed, one task; another seed picks other verses
    assert build_cloze_items(verses, 50, num_choices=4, seed=3) == items
    assert build_cloze_items(verses, 50, num_choices=4, seed=4) != items


def test_cloze_task_round_trip_and_errors(tmp_path, verses):
    items = build_cloze_items(verses[:200], 30, num_choices=3, seed=0)
    path = write_task(items, str(tmp_path / "sub" / "task.jsonl"))
    assert load_mc_task(path) == items
    assert not list((tmp_path / "sub").glob("*.tmp"))
    with pytest.raises(ValueError, match="at least 4 texts with >= 4 words"):
        build_cloze_items(["a b c d", "e f g h", "short text", "i j k l"], 2, num_choices=4)
