"""Multi-phase curricula: exact sample accounting over real .bin/.idx data .

Data: real hadith Arabic / English, Quran verses and Python documentation, tokenized byte-level
(UTF-8 bytes + an EOD id 256) and written with megatron-core's IndexedDatasetBuilder. The byte
tokenizer makes the original text the oracle: a sample's token ranges must be exactly the bytes
of the documents they name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import numpy
import pytest
import torch
import yaml

from megatron_ar.data.curriculum import (
    CurriculumConfig,
    CurriculumConfigError,
    CurriculumDataset,
    CurriculumMismatchError,
    PretrainingSampler,
    batch_layout,
    plan_curriculum,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import material  # noqa: E402

pytestmark = pytest.mark.unit

EOD = 256
SEQ = 64
GBS = 8
REPO = material.REPO


def _write_dataset(prefix: str, texts) -> list:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    docs = [list(t.encode("utf-8")) + [EOD] for t in texts]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for d in docs:
        builder.add_document(torch.tensor(d), [len(d)])
    builder.finalize(prefix + ".idx")
    return docs


def _docs_texts(limit_bytes: int):
    out, total = [], 0
    for p in material.python_docs_paths():
        with open(p, encoding="utf-8") as f:
            t = f.read()
        if 500 < len(t.encode()) < 6000:
            out.append(t)
            total += len(t.encode())
        if total > limit_bytes:
            break
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four real-text datasets; returns (folder, {name: (prefix, docs)})."""
    root = tmp_path_factory.mktemp("curriculum")
    recs = material.bukhari_records()
    quran = material.quran_lines("simple")
    texts = {
        "ar": [r["arabic"] for r in recs[:30]],
        "en": [r["english"]["text"] for r in recs[:40]],
        "code": _docs_texts(12000),
        "ar_cur": [" ".join(quran[i:i + 8]) for i in range(0, 240, 8)],
    }
    out = {}
    for name, t in texts.items():
        prefix = str(root / "data" / f"{name}_text_document")
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        out[name] = (prefix, _write_dataset(prefix, t))
    return root, out


def _spe(docs) -> int:
    return (sum(len(d) for d in docs) - 1) // SEQ


def _recipe(corpus, **over):
    root, data = corpus
    recipe = {
        "model": {"seq_length": SEQ},
        "schedule": {"global_batch_size": GBS, "seed": 7},
        "data": {
            "cache_dir": str(root / "cache"),
            "datasets": {n: p for n, (p, _) in data.items()},
            "phases": [
                # 1.5 epochs of ar+en at natural proportions
                {"name": "broad", "epochs": 1.5, "lr_schedule": "cosine",
                 "blend": {"ar": {"datasets": ["ar"]}, "en": {"datasets": ["en"]}}},
                # continues the ar/en streams across the phase change; code is new
                {"name": "immersion", "tokens": 400 * SEQ,
                 "blend": {"ar": {"weight": 50, "datasets": ["ar"]}, "en": {"weight": 40, "datasets": ["en"]},
                           "code": 10}},
                {"name": "cooldown", "epochs": 1, "lr_schedule": "linear_to_zero",
                 "datasets": ["ar_cur"]},
            ],
        },
    }
    recipe["data"].update(over)
    return recipe


def _load_recipe_data(path):
    from megatron_ar.training.config import load_config

    return load_config(path).data


def _cc(recipe):
    """The recipe's curriculum, read by the one recipe loader (the trainer's)."""
    from megatron_ar.training.config import load_config

    return load_config(text=yaml.safe_dump(recipe, sort_keys=False)).data


@pytest.fixture(scope="module")
def built(corpus):
    cfg = _cc(_recipe(corpus))
    return cfg, CurriculumDataset(cfg)


# ------------------------------------------------------------------------------ plan arithmetic
def test_plan_matches_hand_arithmetic(corpus, built):
    _, data = corpus
    cfg, ds = built
    spe = {n: _spe(docs) for n, (_, docs) in data.items()}
    plan = ds.plan
    # phase 0: ceil(1.5 * (spe_ar + spe_en)) rounded up to whole global batches, natural shares
    need0 = -(-3 * (spe["ar"] + spe["en"]) // 2)
    n0 = -(-need0 // GBS) * GBS
    p0 = plan.phases[0]
    assert (p0.requested_samples, p0.samples, p0.tokens) == (need0, n0, n0 * SEQ)
    exact_ar = Fraction(n0 * spe["ar"], spe["ar"] + spe["en"])
    got = {dp.dataset: dp.samples for dp in p0.datasets}
    assert got["ar"] + got["en"] == n0 and abs(got["ar"] - exact_ar) < 1
    # phase 1: 400 samples at exactly 50/40/10
    p1 = plan.phases[1]
    assert p1.samples == 400 and {dp.dataset: dp.samples for dp in p1.datasets} == {"ar": 200, "en": 160, "code": 40}
    assert p1.start_sample == n0 and p1.start_step == n0 / GBS and p1.steps == 50
    ar1 = next(dp for dp in p1.datasets if dp.dataset == "ar")
    assert ar1.stream_start == got["ar"]  # the ar stream continues, nothing skipped
    assert ar1.epochs_after == pytest.approx((got["ar"] + 200) / spe["ar"])
    # phase 2: one natural epoch of ar_cur, rounded up to a multiple of 8
    p2 = plan.phases[2]
    assert p2.samples == -(-spe["ar_cur"] // GBS) * GBS and p2.lr_schedule == "linear_to_zero"
    assert plan.total_samples == n0 + 400 + p2.samples
    assert plan.total_steps == plan.total_samples / GBS
    assert plan.stats["code"].num_tokens == sum(len(d) for d in data["code"][1])


def test_plan_tool_json_and_text(corpus, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(corpus), sort_keys=False))  # group order matters
    res = subprocess.run([sys.executable, "tools/curriculum_plan.py", str(path), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    plan = plan_curriculum(_load_recipe_data(str(path)))
    assert summary["total_samples"] == plan.total_samples
    assert [p["samples"] for p in summary["phases"]] == [p.samples for p in plan.phases]
    assert summary["phases"][1]["datasets"][2]["dataset"] == "code"
    assert len(summary["fingerprint"]) == 64
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import curriculum_plan as tool

    assert tool.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "Phase 1 'immersion'" in text and "50.00%" in text and summary["fingerprint"] in text


def test_plan_warnings_fire(corpus):
    _, data = corpus
    spe_code = _spe(data["code"][1])
    recipe = _recipe(corpus)
    recipe["data"]["phases"] = [
        # code at 50% of a phase 5x the natural size of ar+code: code is read > 4 epochs
        {"name": "heavy", "epochs": 5, "blend": {"ar": 50, "code": 50}},
        {"name": "tiny", "tokens": 3 * SEQ, "datasets": ["en"]},
    ]
    plan = plan_curriculum(_cc(recipe))
    w = "\n".join(plan.warnings)
    assert plan.epochs_total["code"] > 4
    assert "dataset 'code' is repeated" in w and "phase 0 'heavy'" in w
    assert "phase 1 'tiny' asks for 3 samples" in w and "less than one global batch (8" in w
    assert "'ar_cur' is declared in data.datasets but used by no phase" in w
    assert plan.phases[1].samples == GBS  # rounded up to one step
    code = next(d for d in plan.phases[0].datasets if d.dataset == "code")
    assert code.epochs == pytest.approx(code.samples / spe_code)


# ------------------------------------------------------------------------------ accounting
def _all_infos(ds):
    return [ds.describe_sample(i) for i in range(len(ds))]


@pytest.fixture(scope="module")
def infos(built):
    return _all_infos(built[1])


def test_every_sample_counted_across_phases_and_epochs(corpus, built, infos):
    _, data = corpus
    _, ds = built
    plan = ds.plan
    # each (dataset, epoch, epoch-sample) is used exactly once, and the used positions of each
    # dataset stream are exactly 0..consumed-1: a phase change neither repeats nor drops
    keys = Counter((i.dataset, i.epoch, i.epoch_sample) for i in infos)
    assert max(keys.values()) == 1
    for name, (_, docs) in data.items():
        spe = _spe(docs)
        consumed = sum(dp.samples for ph in plan.phases for dp in ph.datasets if dp.dataset == name)
        pos = sorted(i.stream_position for i in infos if i.dataset == name)
        assert pos == list(range(consumed))
        assert sorted((e * spe + j) for (n, e, j) in keys if n == name) == pos
    # the ar stream crosses the phase change in the middle of its second epoch
    ar = [i for i in infos if i.dataset == "ar"]
    p0_last = max(i.stream_position for i in ar if i.phase == 0)
    p1_first = min(i.stream_position for i in ar if i.phase == 1)
    assert p1_first == p0_last + 1 and ar[-1].epoch >= 1
    assert {i.epoch for i in ar if i.phase == 1} == {1}  # phase 1 continues epoch 1


def test_token_coverage_per_document_epoch(corpus, built, infos):
    """Every token of every document is trained on once per full epoch, except Megatron's
    sub-sequence tail of the epoch (< seq_length + 1 tokens)."""
    _, data = corpus
    _, ds = built
    assert all(i.num_tokens == SEQ + 1 for i in infos)
    for name in ("ar", "en", "ar_cur"):
        docs = data[name][1]
        total = sum(len(d) for d in docs)
        spe = _spe(docs)
        full_epochs = sum(1 for e in range(10)
                          if sum(1 for i in infos if i.dataset == name and i.epoch == e) == spe)
        assert full_epochs >= 1
        for e in range(full_epochs):
            cover = [numpy.zeros(len(d), dtype=numpy.int64) for d in docs]
            for i in infos:
                if i.dataset == name and i.epoch == e:
                    left = SEQ  # the extra (+1) token belongs to the next sample
                    for doc, a, b in i.token_ranges:
                        b = min(b, a + left)
                        cover[doc][a:b] += 1
                        left -= b - a
            flat = numpy.concatenate(cover)
            assert flat.max() == 1
            assert flat.sum() == spe * SEQ and total - flat.sum() <= SEQ


def test_reshuffle_between_epochs_same_multiset(corpus, built, infos):
    _, ds = built
    name = "ar"
    d = ds.names.index(name)
    g0, g1 = ds.epoch_dataset(d, 0), ds.epoch_dataset(d, 1)
    # same multiset of documents, different order (each epoch re-shuffles and re-packs)
    assert sorted(g0.document_index.tolist()) == sorted(g1.document_index.tolist()) == list(range(30))
    assert g0.document_index.tolist() != g1.document_index.tolist()
    assert g0.shuffle_index.tolist() != g1.shuffle_index.tolist()
    # the order the documents are first seen in training differs between epochs
    order = {}
    for i in infos:
        if i.dataset == name and i.epoch in (0, 1):
            lst = order.setdefault(i.epoch, [])
            for doc in i.document_ids:
                if doc not in lst:
                    lst.append(doc)
    assert sorted(order[0]) == list(range(30)) and order[0] != order[1]


def test_exact_blend_proportions(built, infos):
    _, ds = built
    ph = ds.plan.phases[1]
    names = [i.dataset for i in infos[ph.start_sample:ph.end_sample]]
    assert Counter(names) == {"ar": 200, "en": 160, "code": 40}
    w = {"ar": 0.5, "en": 0.4, "code": 0.1}
    seen = Counter()
    for k, n in enumerate(names, 1):  # every prefix stays within ~1 sample of the target
        seen[n] += 1
        assert all(abs(seen[x] - w[x] * k) <= 1.0 + 1e-9 for x in w), (k, seen)


def test_tokens_are_the_documents_bytes(corpus, built, infos):
    """getitem (megatron GPTDataset) == the original text bytes at describe_sample's ranges."""
    _, data = corpus
    _, ds = built
    rng = numpy.random.default_rng(0)
    for idx in sorted(rng.choice(len(ds), 60, replace=False).tolist()) + [0, len(ds) - 1]:
        info = infos[idx]
        docs = data[info.dataset][1]
        expect = numpy.concatenate([docs[d][a:b] for d, a, b in info.token_ranges])
        raw = ds.sample_tokens(idx)
        assert len(expect) == SEQ + 1 and raw.tolist() == expect.tolist()
        item = ds[idx]
        assert item["tokens"].tolist() == expect[:-1].tolist()
        assert item["labels"].tolist() == expect[1:].tolist()
        assert item["dataset_id"] == info.dataset_id and item["phase"] == info.phase


# ------------------------------------------------------------------------------ resume
def _run_steps(ds, steps, mbs, dp):
    """Token arrays of each step (all DP ranks), consuming like a training loop."""
    samplers = [iter(ds.sampler(mbs, r, dp)) for r in range(dp)]
    per_step = GBS // (mbs * dp)
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(per_step):
            for s in samplers:
                idx = next(s)
                batch.append((idx, [ds.sample_tokens(i).tolist() for i in idx]))
        out.append(batch)
        ds.advance(GBS)
    return out


def test_resume_gives_identical_remaining_sequence(corpus, built):
    cfg, ds = built
    total_steps = len(ds) // GBS
    ds.consumed_samples = 0
    full = _run_steps(ds, total_steps, mbs=2, dp=2)
    assert [i for step in full for idxs, _ in step for i in idxs] != []
    flat = sorted(i for step in full for idxs, _ in step for i in idxs)
    assert flat == list(range(len(ds)))  # the DP ranks together consume every sample once
    k = ds.plan.phases[1].start_step + 3  # resume shortly after the phase change
    ds.consumed_samples = 0
    ds.advance(int(k) * GBS)
    state = ds.state_dict()
    assert state["phase"] == "immersion" and state["consumed_tokens"] == int(k) * GBS * SEQ
    cache = os.path.join(cfg.cache_dir)
    mtimes = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
              for r, _, fs in os.walk(cache) for f in fs}
    resumed = CurriculumDataset(_cc(_recipe(corpus)))  # a fresh process's view
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = _run_steps(resumed, total_steps - int(k), mbs=2, dp=2)
    assert rest == full[int(k):]
    after = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(cache) for f in fs}
    assert after == mtimes  # built once: the second instance only reads the cache
    # megatron-style DataLoader over the same sampler, from the resume point
    resumed.load_state_dict(state)
    loader = torch.utils.data.DataLoader(resumed, batch_sampler=resumed.sampler(2, 1, 2), num_workers=0)
    first = next(iter(loader))
    assert first["tokens"].shape == (2, SEQ) and first["index"].tolist() == batch_layout(
        int(k) * GBS, GBS, 2, 2)[0, 1].tolist()
    assert first["tokens"].tolist() == [t[:-1] for t in full[int(k)][1][1]]  # rank 1, micro batch 0
    ds.consumed_samples = 0


def test_sampler_and_batch_layout_semantics():
    s = PretrainingSampler(total_samples=40, consumed_samples=16, micro_batch_size=2,
                           data_parallel_rank=1, data_parallel_size=2)
    assert list(s)[:3] == [[18, 19], [22, 23], [26, 27]] and len(list(s)) == 6
    tail = PretrainingSampler(42, 40, 2, 0, 2, drop_last=False)
    assert list(tail) == [[40, 41]]
    lay = batch_layout(16, 8, 2, 2)
    assert lay.shape == (2, 2, 2) and lay[1, 1].tolist() == [22, 23]
    with pytest.raises(ValueError, match="not divisible"):
        batch_layout(0, 10, 2, 2)


def test_describe_batch_rank(built):
    _, ds = built
    rows = ds.describe_batch(16, GBS, 2, 2, rank=1)
    assert [r["global_index"] for r in rows] == [18, 19, 22, 23]
    assert {r["micro_batch"] for r in rows} == {0, 1} and rows[0]["phase_name"] == "broad"


# ------------------------------------------------------------------------------ fingerprint
def test_changed_recipe_fails_loudly(corpus, built):
    _, ds = built
    ds.consumed_samples = 0
    ds.advance(GBS * 4)
    state = ds.state_dict()
    r = _recipe(corpus)
    r["data"]["phases"][1]["blend"]["en"]["weight"] = 30
    other = CurriculumDataset(_cc(r))
    with pytest.raises(CurriculumMismatchError) as exc:
        other.load_state_dict(state)
    msg = str(exc.value)
    assert "phases[1].blend: share of dataset 'en' 0.4 -> 0.333333" in msg
    r = _recipe(corpus)
    r["model"]["seq_length"] = SEQ * 2
    with pytest.raises(CurriculumMismatchError, match="seq_length: 64 -> 128"):
        CurriculumDataset(_cc(r)).load_state_dict(state)
    ds.consumed_samples = 0


def test_changed_idx_fails_loudly(corpus, tmp_path):
    _, data = corpus
    folder = tmp_path / "d"
    folder.mkdir()
    recs = material.bukhari_records()
    prefix = str(folder / "ar_text_document")
    _write_dataset(prefix, [r["arabic"] for r in recs[:30]])
    r = _recipe(corpus, cache_dir=str(tmp_path / "cache"))
    r["data"]["datasets"]["ar"] = prefix
    r["data"]["phases"] = r["data"]["phases"][:1]
    ds = CurriculumDataset(_cc(r))
    state = ds.state_dict()
    # one document re-tokenized (an edit) under the same path
    _write_dataset(prefix, [r_["arabic"] for r_ in recs[:29]] + [recs[29]["arabic"] + " زيادة"])
    again = CurriculumDataset(_cc(r))
    with pytest.raises(CurriculumMismatchError) as exc:
        again.load_state_dict(state)
    assert f"datasets.ar ({prefix}.idx) changed: num_tokens" in str(exc.value)
    # a tampered cached index is refused too
    mpath = os.path.join(again.index_dir, "manifest.json")
    m = json.load(open(mpath))
    m["total_samples"] += 8
    json.dump(m, open(mpath, "w"))
    with pytest.raises(CurriculumMismatchError, match="total_samples"):
        CurriculumDataset(_cc(r))


def test_truncated_bin_is_named(corpus, tmp_path):
    _, data = corpus
    prefix = str(tmp_path / "en_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(data["en"][0] + ext, prefix + ext)
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".bin") - 10)
    r = _recipe(corpus, cache_dir=str(tmp_path / "cache"))
    r["data"]["datasets"]["en"] = prefix
    with pytest.raises(Exception, match=r"data.datasets.en: .*\.bin has .* bytes"):
        CurriculumDataset(_cc(r))


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["phases"][0].update(tokens=100), "data.phases[0]: give exactly one budget"),
    (lambda d: d["phases"][1]["blend"]["en"].update(datasets=["nope"]), "data.phases[1].blend.en.datasets[0]: unknown dataset 'nope'"),
    (lambda d: d["phases"][1]["blend"].update(code=-1), "data.phases[1].blend.code: must be > 0"),
    (lambda d: d["phases"][1].update(tokens="12Q"), "data.phases[1].tokens: cannot parse"),
    (lambda d: d["phases"][0].update(blend={"ar": {"weight": 1, "datasets": ["ar"]}, "en": {"datasets": ["en"]}}),
     "data.phases[0].blend: give a weight to every group or to none"),
    (lambda d: d.update(bogus=1), "data.bogus: unknown key"),
    (lambda d: d["datasets"].update(x="/a/b.bin"), "data.datasets.x: give the prefix without"),
])
def test_config_errors_name_the_key(corpus, mutate, key):
    from megatron_ar.training.config import ConfigError

    r = _recipe(corpus)
    mutate(r["data"])
    with pytest.raises(CurriculumConfigError) as exc:  # the data layer's own schema
        CurriculumConfig.from_dict(r["data"])
    assert key in str(exc.value)
    with pytest.raises(ConfigError) as exc:  # and through the recipe loader
        _cc(r)
    assert key in str(exc.value)


def test_run_level_values_once_and_token_suffixes(corpus):
    from megatron_ar.training.config import ConfigError

    r = _recipe(corpus)
    r["data"]["global_batch_size"] = 16  # stated once, in the schedule section
    with pytest.raises(ConfigError, match="data.global_batch_size: a run-level value, set it once "
                                          "as schedule.global_batch_size"):
        _cc(r)
    r = _recipe(corpus)
    r["data"]["phases"][1]["tokens"] = "1.5K"
    assert _cc(r).phases[1].tokens == 1500
    cfg = _cc(_recipe(corpus))
    assert (cfg.seq_length, cfg.global_batch_size, cfg.seed) == (SEQ, GBS, 7)
    bare = CurriculumConfig.from_dict(_recipe(corpus)["data"])  # no run-level values filled in
    with pytest.raises(CurriculumConfigError, match="data.seq_length: unknown"):
        plan_curriculum(bare)


def test_appended_phase_resumes_only_when_allowed(corpus, built):
    _, ds = built
    k = ds.plan.phases[1].start_sample + 5 * GBS  # inside phase 1
    ds.consumed_samples = k
    state = ds.state_dict()
    ds.consumed_samples = 0
    r = _recipe(corpus)
    r["data"]["phases"].append({"name": "extra", "tokens": "4K", "datasets": ["code"]})
    longer = CurriculumDataset(_cc(r))
    with pytest.raises(CurriculumMismatchError, match="phases: 3 -> 4 phases"):
        longer.load_state_dict(state)
    longer.load_state_dict(state, allow_future_changes=True)
    assert longer.consumed_samples == k
    for i in list(range(0, k, 7)) + [k - 1]:  # what was trained on is identical
        assert longer.sample_tokens(i).tolist() == ds.sample_tokens(i).tolist()
    r = _recipe(corpus)
    r["data"]["phases"][1]["tokens"] = 800 * SEQ  # the running phase itself changed: refused
    changed = CurriculumDataset(_cc(r))
    with pytest.raises(CurriculumMismatchError, match=r"phases\[1\] changed after it started"):
        changed.load_state_dict(state, allow_future_changes=True)


def test_plan_needs_only_idx_files(corpus, tmp_path, capsys):
    _, data = corpus
    r = _recipe(corpus)
    for name, (prefix, _) in data.items():
        shutil.copy(prefix + ".idx", tmp_path / (name + ".idx"))
        r["data"]["datasets"][name] = str(tmp_path / name)
    plan = plan_curriculum(_cc(r))
    assert plan.total_samples == plan_curriculum(_cc(_recipe(corpus))).total_samples
    assert not any(p.suffix == ".bin" for p in tmp_path.iterdir())
    # The CLI too: the plan prints, the .bin-sampling fingerprint is reported as unavailable.
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import curriculum_plan as tool

    assert tool.main([str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["total_samples"] == plan.total_samples
    assert summary["fingerprint"].startswith("unavailable:") and ".bin" in summary["fingerprint"]


def test_moved_data_reuses_its_cache_and_changed_settings_rebuild(corpus, built, tmp_path):
    """Moving the .bin/.idx to another mount keeps the curriculum and its cached indices (megatron
    hashes GPTDataset's ``dataset_path`` into its cache names: we give it a label of the .idx
    content, not the path); a setting that changes the indices builds its own instead of trusting
    a marker of other settings."""
    root, data = corpus
    _, ds = built
    gpt_dir = root / "cache" / "gpt"
    before = sorted(str(p) for p in gpt_dir.rglob("*") if p.is_file())
    r = _recipe(corpus)
    for name, (prefix, _) in data.items():
        for ext in (".bin", ".idx"):
            shutil.copy(prefix + ext, tmp_path / (name + ext))
        r["data"]["datasets"][name] = str(tmp_path / name)
    moved = CurriculumDataset(_cc(r))
    assert moved.fingerprint == ds.fingerprint
    assert sorted(str(p) for p in gpt_dir.rglob("*") if p.is_file()) == before  # nothing rebuilt
    for i in (0, 17, len(ds) - 1):
        assert moved.sample_tokens(i).tolist() == ds.sample_tokens(i).tolist()
    tokens = numpy.asarray(ds[3]["tokens"])
    eod = int(Counter(tokens.tolist()).most_common(1)[0][0])  # a token that occurs in sample 3
    r["data"].update(eod_mask_loss=True, eod_token_id=eod)
    masked = CurriculumDataset(_cc(r))
    item = masked[3]
    assert item["tokens"].tolist() == tokens.tolist()
    want = (tokens != eod).astype(numpy.float32)  # megatron masks the loss at EOD inputs
    assert want.min() == 0.0
    numpy.testing.assert_array_equal(numpy.asarray(item["loss_mask"], dtype=numpy.float32), want)
