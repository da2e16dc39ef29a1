"""Tests for evaluation.metrics: hand-computed cases plus agreement with torch / sklearn / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import ndcg_score

import jina_clip_v2.evaluation.metrics as M
from jina_clip_v2.evaluation.metrics import (
    chunked_topk,
    image_text_retrieval,
    mrr_at_k,
    ndcg_at_k,
    rankdata,
    recall_at_k,
    retrieval_scores,
    spearman,
    sts_scores,
)

# --------------------------------------------------------------------------------------------
# chunked_topk
# --------------------------------------------------------------------------------------------

CHUNKINGS = [
    dict(chunk_size=1),
    dict(chunk_size=7),
    dict(chunk_size=10_000),  # bigger than the data: a single block
    dict(query_chunk_size=3, corpus_chunk_size=5),
    dict(query_chunk_size=64, corpus_chunk_size=2),
]


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("seed", range(4))
def test_chunked_topk_matches_full_topk(chunking, seed):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(13, 16, generator=g)
    corpus = torch.randn(29, 16, generator=g)
    full = F.normalize(queries, dim=1) @ F.normalize(corpus, dim=1).T
    for k in (1, 5, 29):
        ref_scores, ref_index = torch.topk(full, k, dim=1)
        scores, index = chunked_topk(queries, corpus, k, **chunking)
        assert scores.dtype == torch.float32 and index.dtype == torch.int64
        assert scores.shape == index.shape == (13, k)
        assert torch.equal(index, ref_index)
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunking", CHUNKINGS[:3])
def test_chunked_topk_dot_product_numpy_and_half_inputs(chunking):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(9, 8)).astype(np.float32) * 3
    corpus = rng.normal(size=(13, 8)).astype(np.float32) * 2
    full = torch.from_numpy(queries) @ torch.from_numpy(corpus).T
    ref_scores, ref_index = torch.topk(full, 4, dim=1)
    scores, index = chunked_topk(queries, corpus, 4, normalize=False, **chunking)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-6, atol=1e-5)

    # fp16 input is accumulated in fp32: identical to upcasting first
    q16, c16 = torch.from_numpy(queries).half(), torch.from_numpy(corpus).half()
    s16, i16 = chunked_topk(q16, c16, 4, normalize=False, **chunking)
    s32, i32 = chunked_topk(q16.float(), c16.float(), 4, normalize=False, **chunking)
    assert s16.dtype == torch.float32
    assert torch.equal(i16, i32) and torch.equal(s16, s32)


def _lexsort_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference: score descending, then lower corpus index first."""
    n = scores.shape[1]
    return np.stack([np.lexsort((np.arange(n), -row))[:k] for row in scores])


@pytest.mark.parametrize("seed", range(5))
def test_chunked_topk_ties_are_deterministic(seed):
    # small integer vectors: many exactly tied dot products (exact in fp32, for any summation order)
    rng = np.random.default_rng(seed)
    queries = rng.integers(-1, 2, size=(17, 3)).astype(np.float32)
    corpus = rng.integers(-1, 2, size=(29, 3)).astype(np.float32)
    scores = queries @ corpus.T
    assert len(np.unique(scores)) < scores.size / 4  # the case really has lots of ties
    for k in (1, 6, 29):
        expected = _lexsort_topk(scores, k)
        for chunking in CHUNKINGS:
            s, idx = chunked_topk(queries, corpus, k, normalize=False, **chunking)
            np.testing.assert_array_equal(idx.numpy(), expected)
            np.testing.assert_array_equal(s.numpy(), np.take_along_axis(scores, expected, axis=1))


def test_chunked_topk_tie_examples():
    # identical corpus rows: lower index first, whatever the chunking
    corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for cs in (1, 2, 3, 100):
        _, idx = chunked_topk(torch.tensor([[1.0, 0.0]]), corpus, 5, chunk_size=cs)
        assert idx.tolist() == [[0, 2, 3, 1, 4]]
    # +0.0 and -0.0 tie (they compare equal); negative and huge scores order correctly
    corpus = torch.tensor([[-0.0], [-2.0], [0.0], [-1.0], [3e38], [-3e38], [-0.0]])
    for cs in (1, 2, 3, 100):
        for k in (1, 2, 3, 7):
            s, idx = chunked_topk(torch.tensor([[1.0]]), corpus, k, normalize=False, chunk_size=cs)
            assert idx.tolist() == [[4, 0, 2, 6, 3, 1, 5][:k]]
            assert torch.equal(s, torch.tensor([[3e38, 0.0, 0.0, 0.0, -1.0, -2.0, -3e38][:k]]))


def test_chunked_topk_errors():
    q, c = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError):
        chunked_topk(q, c, 7)  # k > corpus size
    with pytest.raises(ValueError):
        chunked_topk(q, c, 0)
    with pytest.raises(ValueError):
        chunked_topk(q, torch.randn(6, 4), 2)  # dim mismatch
    with pytest.raises(ValueError):
        chunked_topk(q, c, 2, chunk_size=0)
    with pytest.raises(ValueError):
        chunked_topk(q, torch.randn(6), 2)  # not 2-D
    with pytest.raises(ValueError):
        chunked_topk(q, torch.full((6, 3), float("nan")), 2)
    with pytest.raises(ValueError):
        chunked_topk(q, torch.full((6, 3), float("inf")), 2, normalize=False)
    # k == corpus size is fine, and an empty query set gives empty results
    assert chunked_topk(q, c, 6)[1].shape == (4, 6)
    assert chunked_topk(torch.empty(0, 3), c, 2)[1].shape == (0, 2)


@pytest.mark.parametrize(
    "chunking, n_calls, max_shape",
    [
        (dict(query_chunk_size=4, corpus_chunk_size=7), 3 * 4, (4, 7)),
        (dict(chunk_size=5), 2 * 5, (5, 5)),
        (dict(chunk_size=1), 10 * 25, (1, 1)),
        (dict(chunk_size=1000), 1, (10, 25)),
    ],
)
def test_chunked_topk_honours_chunk_sizes(monkeypatch, chunking, n_calls, max_shape):
    shapes = []
    original = M._score_block

    def recording(q, c):
        block = original(q, c)
        shapes.append(tuple(block.shape))
        return block

    monkeypatch.setattr(M, "_score_block", recording)
    queries, corpus = torch.randn(10, 4), torch.randn(25, 4)
    _, idx = chunked_topk(queries, corpus, 3, **chunking)
    assert len(shapes) == n_calls
    assert max(s[0] for s in shapes) == max_shape[0] and max(s[1] for s in shapes) == max_shape[1]
    monkeypatch.setattr(M, "_score_block", original)
    assert torch.equal(idx, chunked_topk(queries, corpus, 3, chunk_size=10_000)[1])


# --------------------------------------------------------------------------------------------
# image_text_retrieval
# --------------------------------------------------------------------------------------------

# 12 images, 17 captions: images 0-4 have two captions each, images 5-11 one each.
HAND_T2I = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11]
# score(t, i) = p_i + q_t + b_t * [caption t describes image i] with p_i = i, q_t = t. Text side:
# caption t ranks its image g at 1 + #{i != g : i > g + b_t}. Image side: image i ranks its best
# caption at 1 + #{non-caption t' : t' > max over its captions of (t + b_t)}.
HAND_BONUS = [11.5, 9.5, 9.5, 5.5, -2.5, -2.5, 4.5, -2.5, -2.5, 4.5, 6.5, 3.5, -1.5, 2.5, 2.5, -5.5, 0.5]


def _hand_embeddings():
    n_img, n_txt = 12, len(HAND_T2I)
    image = np.zeros((n_img, n_img + 2), dtype=np.float32)
    image[:, :n_img] = np.eye(n_img)
    image[:, n_img] = np.arange(n_img)  # p_i
    image[:, n_img + 1] = 1.0
    text = np.zeros((n_txt, n_img + 2), dtype=np.float32)
    text[np.arange(n_txt), HAND_T2I] = HAND_BONUS
    text[:, n_img] = 1.0
    text[:, n_img + 1] = np.arange(n_txt)  # q_t
    return image, text


def test_image_text_retrieval_hand_computed():
    image, text = _hand_embeddings()
    # Worked out by hand (see the comment on HAND_BONUS):
    # rank of the right image per caption t0..t16: 1 3 2 6 12 12 5 11 10 4 1 3 6 2 1 7 1
    #   R@1 = 4/17 (t0 t10 t14 t16), R@5 = 10/17, R@10 = 14/17 (all but t4, t5, t7)
    # best-caption rank per image 0..11 (caption scores t + b_t, others t'):
    #   img0: 11.5 -> 12..16 above -> 6;  img1: 11.5 -> 6;  img2: max(1.5, 2.5) = 2.5 -> 3,6..16 -> 13
    #   img3: 10.5 -> 7;  img4: 13.5 -> 4;  img5: 16.5 -> 1;  img6: 14.5 -> 3;  img7: 10.5 -> 11,13..16 -> 6
    #   img8: 15.5 -> 2;  img9: 16.5 -> 1;  img10: 9.5 -> 10..14,16 -> 7;  img11: 16.5 -> 1
    #   R@1 = 3/12, R@5 = 6/12 (img 4 5 6 8 9 11), R@10 = 11/12 (all but img2)
    expected = {
        "text_to_image_recall@1": 100 * 4 / 17,
        "text_to_image_recall@5": 100 * 10 / 17,
        "text_to_image_recall@10": 100 * 14 / 17,
        "image_to_text_recall@1": 25.0,
        "image_to_text_recall@5": 50.0,
        "image_to_text_recall@10": 100 * 11 / 12,
    }
    for chunk_size in (1, 5, 4096):
        got = image_text_retrieval(image, text, HAND_T2I, normalize=False, chunk_size=chunk_size)
        assert list(got) == list(expected)
        assert all(type(v) is float for v in got.values())
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key


def _brute_force_recall(image, text, t2i, ks):
    sim = F.normalize(torch.as_tensor(text), dim=1) @ F.normalize(torch.as_tensor(image), dim=1).T
    sim = sim.numpy()
    t2i = np.asarray(t2i)
    out = {}
    for k in ks:  # caption hit if its image is among the k best images
        out[f"text_to_image_recall@{k}"] = 100 * np.mean([t2i[t] in np.argsort(-sim[t])[:k] for t in range(len(t2i))])
    for k in ks:  # image hit if any of its captions is among the k best captions
        out[f"image_to_text_recall@{k}"] = 100 * np.mean(
            [bool(set(np.argsort(-sim[:, i])[:k]) & set(np.flatnonzero(t2i == i))) for i in range(image.shape[0])]
        )
    return out


@pytest.mark.parametrize("seed", range(3))
def test_image_text_retrieval_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_img = 20
    t2i = np.repeat(np.arange(n_img), 5)  # Flickr/COCO style: 5 captions per image
    image = rng.normal(size=(n_img, 12))
    text = image[t2i] + 1.5 * rng.normal(size=(len(t2i), 12))  # noisy captions
    got = image_text_retrieval(torch.as_tensor(image), text, t2i.tolist(), ks=(1, 5, 10), chunk_size=7)
    expected = _brute_force_recall(image.astype(np.float32), text.astype(np.float32), t2i, (1, 5, 10))
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got["text_to_image_recall@1"] < got["text_to_image_recall@10"] <= 100


def test_image_text_retrieval_errors():
    image, text = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError):
        image_text_retrieval(image, text, [0, 0, 1])  # image 2 has no caption
    with pytest.raises(ValueError):
        image_text_retrieval(image, text, [0, 1, 3])  # out of range
    with pytest.raises(ValueError):
        image_text_retrieval(image, text, [0, 1])  # wrong length
    with pytest.raises(ValueError):
        image_text_retrieval(image, text, [0, 1, 2], ks=(1, 5))  # k > number of images
    got = image_text_retrieval(image, text, [0, 1, 2], ks=(1, 3))
    assert set(got.values()) == {100.0}


# --------------------------------------------------------------------------------------------
# nDCG / recall / MRR
# --------------------------------------------------------------------------------------------


def test_ndcg_hand_computed_three_queries():
    qrels = {
        "q1": {"d1": 3, "d3": 2, "d5": 1, "d9": 0},
        "q2": {"d6": 1, "d9": 1},
        "q3": {"d2": 2},
    }
    run = {
        "q1": ["d1", "d2", "d3", "d4", "d5"],
        "q2": ["d7", "d6", "d8", "d9"],
        "q3": ["d2", "d1"],
    }
    # nDCG@3 by hand (gain = rel, discount = log2(rank + 1)):
    # q1: DCG = 3/1 + 0/log2(3) + 2/2 = 4;  IDCG = 3/1 + 2/log2(3) + 1/2
    # q2: DCG = 0 + 1/log2(3) + 0;        IDCG = 1/1 + 1/log2(3)
    # q3: DCG = IDCG = 2
    q1 = 4 / (3 + 2 / math.log2(3) + 0.5)
    q2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert q1 == pytest.approx(0.8400, abs=1e-4) and q2 == pytest.approx(0.3869, abs=1e-4)
    assert ndcg_at_k(run, qrels, 3) == pytest.approx((q1 + q2 + 1.0) / 3, abs=1e-12)
    assert ndcg_at_k(run, qrels, 3, per_query=True) == pytest.approx({"q1": q1, "q2": q2, "q3": 1.0}, abs=1e-12)
    # @1: q1 rel 3 of ideal 3 -> 1; q2 -> 0; q3 -> 1
    assert ndcg_at_k(run, qrels, 1) == pytest.approx(2 / 3, abs=1e-12)
    # @5: q1 DCG = 3 + 1 + 1/log2(6); IDCG = 3 + 2/log2(3) + 1/2; q2 @4: DCG = 1/log2(3) + 1/log2(5)
    q1_5 = (3 + 1 + 1 / math.log2(6)) / (3 + 2 / math.log2(3) + 0.5)
    q2_5 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(run, qrels, 5) == pytest.approx((q1_5 + q2_5 + 1) / 3, abs=1e-12)
    # recall@2: q1 1/3 (d1), q2 1/2 (d6), q3 1/1;  MRR@2: q1 1, q2 1/2, q3 1
    assert recall_at_k(run, qrels, 2) == pytest.approx((1 / 3 + 1 / 2 + 1) / 3, abs=1e-12)
    assert mrr_at_k(run, qrels, 2) == pytest.approx((1 + 1 / 2 + 1) / 3, abs=1e-12)
    assert mrr_at_k(run, qrels, 1) == pytest.approx(2 / 3, abs=1e-12)


def test_ndcg_score_dicts_missing_queries_and_unjudged():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"x": 1}, "q3": {"z": 0}}
    # scores are ranked descending; the tie b/c is broken by doc id descending (trec_eval): c, b
    run = {"q1": {"a": 0.1, "b": 0.5, "c": 0.5}, "q3": {"z": 1.0}}
    ranked = {"q1": ["c", "b", "a"], "q3": ["z"]}
    assert ndcg_at_k(run, qrels, 3) == ndcg_at_k(ranked, qrels, 3)
    # q1: DCG = 0 + 1/log2(3) + 2/2; IDCG = 2 + 1/log2(3); q2 missing from run -> 0; q3 no relevant -> 0
    q1 = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(run, qrels, 3) == pytest.approx(q1 / 3, abs=1e-12)
    assert recall_at_k(run, qrels, 1) == 0.0
    with pytest.raises(ValueError):
        ndcg_at_k({"q": ["a", "a"]}, {"q": {"a": 1}}, 2)
    with pytest.raises(ValueError):
        ndcg_at_k(run, qrels, 0)


def _run_and_qrels(y_true: np.ndarray, y_score: np.ndarray):
    run = {q: {f"d{d}": float(s) for d, s in enumerate(row)} for q, row in enumerate(y_score)}
    qrels = {q: {f"d{d}": int(r) for d, r in enumerate(row)} for q, row in enumerate(y_true)}
    return run, qrels


@pytest.mark.parametrize("seed", range(40))
def test_ndcg_matches_sklearn_random_graded(seed):
    # sklearn's ndcg_score: gain = rel, discount log2(rank + 1), ideal over all labelled docs,
    # all-zero rows score 0 -- the same definition. Continuous scores: no ties to break.
    rng = np.random.default_rng(seed)
    n_queries, n_docs = int(rng.integers(1, 12)), int(rng.integers(2, 30))
    y_true = rng.integers(0, 4, size=(n_queries, n_docs)) * (rng.random((n_queries, n_docs)) < 0.4)
    y_score = rng.normal(size=(n_queries, n_docs))
    run, qrels = _run_and_qrels(y_true, y_score)
    ranked = {q: [f"d{d}" for d in np.argsort(-row)] for q, row in enumerate(y_score)}
    for k in (1, 3, 5, 10, n_docs):
        expected = ndcg_score(y_true, y_score, k=k)
        assert ndcg_at_k(run, qrels, k) == pytest.approx(expected, abs=1e-12)
        assert ndcg_at_k(ranked, qrels, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_ndcg_matches_sklearn_with_tied_scores(seed):
    rng = np.random.default_rng(1000 + seed)
    n_queries, n_docs = 6, 15
    y_score = rng.integers(0, 4, size=(n_queries, n_docs)).astype(float)  # heavy ties
    # (a) ties only among equally relevant docs: sklearn's tie averaging == any tie-break
    y_true = (y_score.astype(int) * 7 + seed) % 4
    run, qrels = _run_and_qrels(y_true, y_score)
    for k in (1, 4, 10):
        assert ndcg_at_k(run, qrels, k) == pytest.approx(ndcg_score(y_true, y_score, k=k), abs=1e-12)
    # (b) arbitrary relevance: feed sklearn strictly decreasing scores encoding our tie-break
    # (score desc, doc id desc as strings), i.e. the exact ranking ndcg_at_k evaluates
    y_true = rng.integers(0, 4, size=(n_queries, n_docs))
    run, qrels = _run_and_qrels(y_true, y_score)
    broken = np.zeros_like(y_score)
    for q in range(n_queries):
        order = sorted(range(n_docs), key=lambda d: f"d{d}", reverse=True)
        order.sort(key=lambda d: -y_score[q, d])
        broken[q, order] = np.arange(n_docs, 0, -1)
    for k in (1, 4, 10):
        assert ndcg_at_k(run, qrels, k) == pytest.approx(ndcg_score(y_true, broken, k=k), abs=1e-12)


def test_retrieval_scores_hand_computed():
    # docs are one-hot, so query rows ARE the score vectors (normalize=False)
    doc_ids = ["d0", "d1", "d2", "d3", "d4", "d5"]
    docs = np.eye(6, dtype=np.float32)
    queries = np.array(
        [
            [0.9, 0.1, 0.8, 0.3, 0.2, 0.0],  # q1 ranking: d0 d2 d3 d4 d1 d5
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # q2 ranking: d5 then ties in index order d0 d1 d2 d3 d4
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # q3: not in qrels -> skipped
        ],
        dtype=np.float32,
    )
    qrels = {"q1": {"d2": 1, "d5": 2}, "q2": {"d4": 1}, "q_other": {"d0": 1}}
    got = retrieval_scores(queries, docs, ["q1", "q2", "q3"], doc_ids, qrels, ks=(5, 10), normalize=False)
    # q1: relevant d2 at rank 2, d5 at rank 6. q2: relevant d4 at rank 6. Cutoff 10 clamps to 6 docs.
    idcg_q1 = 2 + 1 / math.log2(3)
    expected = {
        "ndcg@5": 100 * ((1 / math.log2(3)) / idcg_q1 + 0.0) / 2,
        "ndcg@10": 100 * ((1 / math.log2(3) + 2 / math.log2(7)) / idcg_q1 + 1 / math.log2(7)) / 2,
        "recall@5": 100 * (1 / 2 + 0) / 2,
        "recall@10": 100 * (1 + 1) / 2,
        "mrr@10": 100 * (1 / 2 + 1 / 6) / 2,
    }
    assert list(got) == list(expected)
    assert all(type(v) is float for v in got.values())
    assert got == pytest.approx(expected, abs=1e-10)


def test_retrieval_scores_ignore_identical_ids():
    ids = ["a", "b", "c", "d"]
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    qrels = {"a": {"b": 1}, "c": {"d": 1}}
    plain = retrieval_scores(emb, emb, ids, ids, qrels, ks=(1,), mrr_k=3)
    assert plain == {"ndcg@1": 0.0, "recall@1": 0.0, "mrr@3": 50.0}  # each query finds itself first
    skip = retrieval_scores(emb, emb, ids, ids, qrels, ks=(1,), mrr_k=3, ignore_identical_ids=True)
    assert skip == {"ndcg@1": 100.0, "recall@1": 100.0, "mrr@3": 100.0}


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_scores_matches_full_matrix_reference(seed):
    rng = np.random.default_rng(seed)
    n_q, n_d = 15, 60
    queries = rng.normal(size=(n_q, 10)).astype(np.float32)
    docs = rng.normal(size=(n_d, 10)).astype(np.float32)
    qids, dids = [f"q{i}" for i in range(n_q)], [f"doc{j}" for j in range(n_d)]
    qrels = {qid: {dids[j]: int(rng.integers(0, 3)) for j in rng.choice(n_d, 6, replace=False)} for qid in qids}
    got = retrieval_scores(queries, docs, qids, dids, qrels, ks=(5, 10), chunk_size=8)
    sim = (F.normalize(torch.from_numpy(queries), dim=1) @ F.normalize(torch.from_numpy(docs), dim=1).T).numpy()
    ranked = {qid: [dids[j] for j in np.argsort(-sim[i], kind="stable")] for i, qid in enumerate(qids)}
    for k in (5, 10):
        assert got[f"ndcg@{k}"] == pytest.approx(100 * ndcg_at_k(ranked, qrels, k), abs=1e-9)
        assert got[f"recall@{k}"] == pytest.approx(100 * recall_at_k(ranked, qrels, k), abs=1e-9)
    assert got["mrr@10"] == pytest.approx(100 * mrr_at_k(ranked, qrels, 10), abs=1e-9)


# --------------------------------------------------------------------------------------------
# Spearman / STS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 200))
    gold = rng.integers(0, 6, size=n).astype(float)  # STS-like 0..5 grades: many ties
    pred = rng.integers(0, 20, size=n) / 4.0 + 0.3 * gold  # ties too
    assert spearman(pred, gold) == pytest.approx(spearmanr(pred, gold).statistic, abs=1e-12)
    cont = rng.normal(size=n)
    assert spearman(cont, gold) == pytest.approx(spearmanr(cont, gold).statistic, abs=1e-12)
    assert type(spearman(pred, gold)) is float


def test_rankdata_and_spearman_small_cases():
    np.testing.assert_array_equal(rankdata([10, 20, 10, 30, 20, 10]), [2, 4.5, 2, 6, 4.5, 2])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # by hand: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]; centred x = [-1.5, 0, 0, 1.5],
    # y = [-1.5, -0.5, 0.5, 1.5]; rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        spearman([1.0, float("nan")], [1, 2])


@pytest.mark.parametrize("seed", range(3))
def test_sts_scores(seed):
    rng = np.random.default_rng(seed)
    n = 80
    emb1 = rng.normal(size=(n, 16)).astype(np.float32)
    emb2 = (emb1 + rng.normal(size=(n, 16))).astype(np.float32)
    gold = np.round(rng.uniform(0, 5, size=n) * 2) / 2  # half-point grades, ties
    cos = (emb1 * emb2).sum(1) / np.linalg.norm(emb1, axis=1) / np.linalg.norm(emb2, axis=1)
    got = sts_scores(torch.from_numpy(emb1), emb2, gold, chunk_size=7)
    assert list(got) == ["cosine_spearman"] and type(got["cosine_spearman"]) is float
    assert got["cosine_spearman"] == pytest.approx(100 * spearmanr(cos, gold).statistic, abs=1e-9)
    # gold equal to the cosine itself: rank correlation 100
    assert sts_scores(emb1, emb2, cos)["cosine_spearman"] == pytest.approx(100.0, abs=1e-9)
