"""Model-free evaluation metrics for the jina-clip-v2 paper tables.

What each table reports and which function computes it:

* Tables 2, 5, 7-9, 12-14 (CLIP Benchmark, Crossmodal-3600, multilingual MS COCO): text-to-image
  and image-to-text Recall@k -> :func:`image_text_retrieval`.
* Tables 3, 5, 10, 15 (MTEB retrieval, nDCG@10) and Tables 4, 11 (ViDoRe, nDCG@5)
  -> :func:`retrieval_scores` (built on :func:`ndcg_at_k`, :func:`recall_at_k`, :func:`mrr_at_k`).
* Tables 3, 5, 10, 15 (MTEB STS, Spearman correlation of cosine similarities) -> :func:`sts_scores`
  (built on :func:`spearman`).

Scales: the *report* functions (:func:`image_text_retrieval`, :func:`retrieval_scores`,
:func:`sts_scores`) return **percentages** (0-100), as printed in the paper. The *building block*
functions (:func:`ndcg_at_k`, :func:`recall_at_k`, :func:`mrr_at_k`, :func:`spearman`) return
fractions (0-1 / -1..1), as sklearn, scipy, pytrec_eval and MTEB do.

All search goes through :func:`chunked_topk`, an exact top-k that never materialises the full
query x corpus similarity matrix and breaks score ties deterministically (lower corpus index
first). Every function returns plain Python floats (in dicts for the report functions) and is
deterministic for a given input.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "chunked_topk",
    "image_text_retrieval",
    "ndcg_at_k",
    "recall_at_k",
    "mrr_at_k",
    "retrieval_scores",
    "rankdata",
    "spearman",
    "paired_cosine",
    "sts_scores",
]

#: Default block edge for :func:`chunked_topk`: a 4096 x 4096 block is 64 MiB of fp32 scores
#: (plus ~2x that for the int64 sort keys), independent of how large queries and corpus are.
DEFAULT_CHUNK_SIZE = 4096

_LOW32 = 0xFFFFFFFF
_SHIFT = 1 << 32
_MAX_CORPUS = 1 << 32  # corpus indices are packed into the low 32 bits of the sort keys

Run = Mapping[Hashable, "Mapping[Hashable, float] | Sequence[Hashable]"]
Qrels = Mapping[Hashable, Mapping[Hashable, float]]


# --------------------------------------------------------------------------------------------
# Exact chunked top-k search
# --------------------------------------------------------------------------------------------


def _as_2d(x: Any, name: str) -> torch.Tensor:
    """View ``x`` (torch tensor, numpy array or nested sequence) as a 2-D torch tensor, no copy."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has zero embedding dimensions")
    return t


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_ks(ks: Iterable[int]) -> list[int]:
    out = sorted({_check_positive_int(k, "every k in ks") for k in ks})
    if not out:
        raise ValueError("ks must not be empty")
    return out


def _prepare_block(x: torch.Tensor, device: torch.device, normalize: bool) -> torch.Tensor:
    block = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(block).all()):
        raise ValueError("embeddings contain NaN or inf")
    if normalize:
        block = F.normalize(block, p=2.0, dim=1)
    return block


def _score_block(queries: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
    """Similarity of one (query chunk, corpus chunk) pair: fp32 ``queries @ corpus.T``.

    Every score :func:`chunked_topk` computes goes through this one function (tests count its
    calls and check the block shapes to make sure the chunk sizes are honoured).
    """
    return queries @ corpus.T


def _encode_keys(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pack (fp32 score, corpus index) into int64 keys whose order is (score desc, index asc).

    The high 32 bits hold the float's bit pattern remapped so that signed-integer order equals
    float order; the low 32 bits hold ``2**32 - 1 - index`` so that among equal scores the lower
    index has the larger key. Keys are unique, so ``torch.topk`` on them is exact and its result
    does not depend on how the corpus was chunked. ``index`` broadcasts against ``scores``.
    """
    scores = scores + 0.0  # -0.0 -> +0.0 so that the two zeros tie, as they compare equal
    bits = scores.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return ordered * _SHIFT + (_LOW32 - index)


def _block_topk_keys(scores: torch.Tensor, first_index: int, k: int) -> torch.Tensor:
    """Keys of the exact top-``min(k, n)`` of one ``(rows, n)`` score block (unsorted).

    Fast path: a float ``torch.topk`` of ``k + 1`` picks the right *set* of ``k`` unless the k-th
    and (k+1)-th values tie (a run of equal scores straddles the cutoff, and topk keeps an
    arbitrary part of it); only those rows are redone with the unique int64 keys of every entry.
    """
    n = scores.shape[1]
    kk = min(k, n)
    values, index = torch.topk(scores, min(kk + 1, n), dim=1)
    if bool(torch.isnan(values[:, 0]).any()):  # topk ranks NaN above everything
        raise ValueError("similarity scores contain NaN")
    straddling = values[:, kk] == values[:, kk - 1] if kk < n else None
    keys = _encode_keys(values[:, :kk], index[:, :kk] + first_index)
    if straddling is not None and bool(straddling.any()):
        rows = straddling.nonzero().squeeze(1)
        all_index = torch.arange(first_index, first_index + n, device=scores.device, dtype=torch.int64)
        keys[rows] = torch.topk(_encode_keys(scores[rows], all_index), kk, dim=1).values
    return keys


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = keys & _LOW32
    index = _LOW32 - low
    ordered = torch.div(keys - low, _SHIFT, rounding_mode="floor").to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32), index


def chunked_topk(
    queries: Any,
    corpus: Any,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk_size: int | None = None,
    corpus_chunk_size: int | None = None,
    normalize: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` corpus entries for every query, without the full similarity matrix.

    Scores are cosine similarities (``normalize=True``, rows L2-normalised chunk by chunk) or raw
    dot products (``normalize=False``), computed in fp32 whatever the input dtype. Work proceeds in
    blocks of at most ``query_chunk_size x corpus_chunk_size`` scores (both default to
    ``chunk_size``) with a running top-``k`` merge per query chunk, so peak extra memory is
    ``O(query_chunk * (corpus_chunk + k))`` and a 100k x 100k search never holds 10^10 scores.

    Ties are broken deterministically: equal scores rank the lower corpus index first (+0.0 and
    -0.0 tie), so the result is identical for every chunking. NaN/inf embeddings raise
    ``ValueError``. Cost per block: one matmul, one ``topk(k + 1)``, and a key-based re-selection
    only for rows where a tie straddles the k-th place.

    Args:
        queries: ``(n_queries, dim)`` torch tensor, numpy array or nested sequence.
        corpus: ``(n_corpus, dim)``, same kinds; may live on another device than the queries
            (chunks are moved to the compute device one at a time).
        k: number of neighbours, ``1 <= k <= n_corpus`` (``ValueError`` otherwise).
        chunk_size: default block edge for both queries and corpus.
        query_chunk_size, corpus_chunk_size: override ``chunk_size`` per axis.
        normalize: cosine (True) or dot product (False).
        device: compute device; defaults to the queries' device (CPU for numpy input).

    Returns:
        ``(scores, indices)``: fp32 ``(n_queries, k)`` scores sorted descending and int64
        ``(n_queries, k)`` corpus indices, both on the compute device.
    """
    q_all = _as_2d(queries, "queries")
    c_all = _as_2d(corpus, "corpus")
    if q_all.shape[1] != c_all.shape[1]:
        raise ValueError(f"dimension mismatch: queries have {q_all.shape[1]}, corpus has {c_all.shape[1]}")
    k = _check_positive_int(k, "k")
    n_queries, n_corpus = q_all.shape[0], c_all.shape[0]
    if k > n_corpus:
        raise ValueError(f"k={k} is larger than the corpus ({n_corpus} entries)")
    if n_corpus >= _MAX_CORPUS:
        raise ValueError(f"corpus too large ({n_corpus} >= 2**32 entries)")
    qcs = _check_positive_int(chunk_size if query_chunk_size is None else query_chunk_size, "query_chunk_size")
    ccs = _check_positive_int(chunk_size if corpus_chunk_size is None else corpus_chunk_size, "corpus_chunk_size")
    device = torch.device(device) if device is not None else q_all.device

    out_scores = torch.empty((n_queries, k), dtype=torch.float32, device=device)
    out_index = torch.empty((n_queries, k), dtype=torch.int64, device=device)
    with torch.no_grad():
        for q_start in range(0, n_queries, qcs):
            q_block = _prepare_block(q_all[q_start : q_start + qcs], device, normalize)
            best: torch.Tensor | None = None  # (q_chunk, <=k) int64 keys of the running top-k
            for c_start in range(0, n_corpus, ccs):
                c_block = _prepare_block(c_all[c_start : c_start + ccs], device, normalize)
                keys = _block_topk_keys(_score_block(q_block, c_block).float(), c_start, k)
                if best is not None:
                    keys = torch.cat([best, keys], dim=1)
                    keys = torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=False).values
                best = keys
            assert best is not None and best.shape[1] == k
            best = torch.sort(best, dim=1, descending=True).values
            scores, index = _decode_keys(best)
            out_scores[q_start : q_start + qcs] = scores
            out_index[q_start : q_start + qcs] = index
    return out_scores, out_index


# --------------------------------------------------------------------------------------------
# Cross-modal retrieval (CLIP Benchmark protocol)
# --------------------------------------------------------------------------------------------


def image_text_retrieval(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Sequence[int] | np.ndarray | torch.Tensor,
    ks: Iterable[int] = (1, 5, 10),
    *,
    normalize: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Zero-shot image/text retrieval Recall@k, CLIP Benchmark protocol, in **percent** (0-100).

    ``text_to_image[t]`` is the index of the image that caption ``t`` describes (Flickr30K and
    MS COCO have 5 captions per image; any number >= 1 is allowed, every image needs at least one).

    * ``text_to_image_recall@k`` (CLIP Benchmark's ``image_retrieval_recall@k``, the paper's
      "T-I r@k" / "Zero-shot Image Retrieval"): fraction of captions whose image is among the
      caption's top-k images.
    * ``image_to_text_recall@k`` (CLIP Benchmark's ``text_retrieval_recall@k``, the paper's
      "I-T r@k" / "Zero-shot Text Retrieval"): fraction of images with *any* of their captions
      among the image's top-k captions.

    Similarity is cosine by default (CLIP Benchmark L2-normalises both sides). Every k must not
    exceed the number of images (text->image) or captions (image->text): ``ValueError``.
    Keys come in the order text->image (ascending k), then image->text (ascending k).
    """
    images = _as_2d(image_emb, "image_emb")
    texts = _as_2d(text_emb, "text_emb")
    n_images, n_texts = images.shape[0], texts.shape[0]
    if isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.detach().cpu().numpy()
    owner = np.asarray(text_to_image)
    if owner.ndim != 1 or owner.shape[0] != n_texts:
        raise ValueError(f"text_to_image must have one entry per caption ({n_texts}), got shape {owner.shape}")
    if owner.size and not np.issubdtype(owner.dtype, np.integer):
        raise TypeError(f"text_to_image must hold integer image indices, got dtype {owner.dtype}")
    owner = owner.astype(np.int64)
    if owner.size and (owner.min() < 0 or owner.max() >= n_images):
        raise ValueError(f"text_to_image holds indices outside [0, {n_images})")
    captions_per_image = np.bincount(owner, minlength=n_images)
    if n_images == 0 or n_texts == 0 or (captions_per_image == 0).any():
        missing = np.flatnonzero(captions_per_image == 0)[:10].tolist()
        raise ValueError(f"every image needs at least one caption (images without one: {missing} ...)")
    ks = _check_ks(ks)
    kmax = ks[-1]
    opts = dict(chunk_size=chunk_size, normalize=normalize, device=device)

    _, t2i = chunked_topk(texts, images, kmax, **opts)
    t2i_hits = t2i.cpu().numpy() == owner[:, None]  # (n_texts, kmax)
    _, i2t = chunked_topk(images, texts, kmax, **opts)
    i2t_hits = owner[i2t.cpu().numpy()] == np.arange(n_images)[:, None]  # (n_images, kmax)

    out: dict[str, float] = {}
    for k in ks:
        out[f"text_to_image_recall@{k}"] = 100.0 * float(t2i_hits[:, :k].any(axis=1).mean())
    for k in ks:
        out[f"image_to_text_recall@{k}"] = 100.0 * float(i2t_hits[:, :k].any(axis=1).mean())
    return out


# --------------------------------------------------------------------------------------------
# Ranking metrics (pytrec_eval / MTEB conventions)
# --------------------------------------------------------------------------------------------


def _ranked_doc_ids(entry: Any, k: int) -> list:
    """Top-``k`` doc ids of one run entry: a ranked sequence, or a ``{doc_id: score}`` mapping.

    Mappings are ranked like trec_eval / pytrec_eval: score descending, ties by doc id in
    *descending* string order (trec_eval's ``comp_sim_docno``).
    """
    if isinstance(entry, Mapping):
        items = [(doc, float(score)) for doc, score in entry.items()]
        if any(math.isnan(score) for _, score in items):
            raise ValueError("run scores contain NaN")
        items.sort(key=lambda item: str(item[0]), reverse=True)
        items.sort(key=lambda item: item[1], reverse=True)  # stable: keeps the doc-id tie order
        return [doc for doc, _ in items[:k]]
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
        raise TypeError(f"a run entry must be a ranked sequence of doc ids or a {{doc_id: score}} mapping, got {type(entry)}")
    ranked = list(entry)
    if len(set(ranked)) != len(ranked):
        raise ValueError("a ranked list contains the same doc id twice")
    return ranked[:k]


def _dcg(gains: Iterable[float]) -> float:
    return math.fsum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def _ndcg_one(ranked: list, rels: Mapping[Hashable, float], k: int) -> float:
    gains = [max(float(rels.get(doc, 0.0)), 0.0) for doc in ranked[:k]]
    ideal = sorted((float(r) for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = _dcg(ideal)
    return _dcg(gains) / idcg if idcg > 0 else 0.0


def _recall_one(ranked: list, rels: Mapping[Hashable, float], k: int) -> float:
    relevant = {doc for doc, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant)


def _mrr_one(ranked: list, rels: Mapping[Hashable, float], k: int) -> float:
    for rank, doc in enumerate(ranked[:k], start=1):
        if rels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def _aggregate(metric, run: Run, qrels: Qrels, k: int, per_query: bool):
    k = _check_positive_int(k, "k")
    if not qrels:
        raise ValueError("qrels is empty")
    values = {qid: metric(_ranked_doc_ids(run[qid], k) if qid in run else [], rels, k) for qid, rels in qrels.items()}
    if per_query:
        return values
    return math.fsum(values.values()) / len(values)


def ndcg_at_k(run: Run, qrels: Qrels, k: int, *, per_query: bool = False) -> float | dict[Hashable, float]:
    """Mean nDCG@k as a fraction (0-1), pytrec_eval's ``ndcg_cut_k`` (what MTEB/ViDoRe report).

    Järvelin-Kekäläinen nDCG with linear gain ``rel`` and discount ``log2(rank + 1)`` (rank from
    1); the ideal DCG ranks *all* judged documents of the query (not only retrieved ones) by
    relevance. Grades <= 0 give no gain. A query whose judgements are all <= 0 scores 0.

    Args:
        run: ``{query_id: ranked list of doc ids}`` or ``{query_id: {doc_id: score}}`` (scores are
            ranked descending, ties by doc id in descending string order, like trec_eval).
        qrels: ``{query_id: {doc_id: graded relevance}}``. Doc ids must compare equal to the run's
            (same type). The mean runs over the queries of ``qrels``; a query missing from
            ``run`` scores 0 (``trec_eval -c``).
        k: cutoff.
        per_query: return ``{query_id: nDCG@k}`` instead of the mean.
    """
    return _aggregate(_ndcg_one, run, qrels, k, per_query)


def recall_at_k(run: Run, qrels: Qrels, k: int, *, per_query: bool = False) -> float | dict[Hashable, float]:
    """Mean Recall@k as a fraction, pytrec_eval's ``recall_k``: relevant (grade > 0) documents in the
    top k over all relevant documents of the query (0 when it has none). Same inputs as :func:`ndcg_at_k`."""
    return _aggregate(_recall_one, run, qrels, k, per_query)


def mrr_at_k(run: Run, qrels: Qrels, k: int, *, per_query: bool = False) -> float | dict[Hashable, float]:
    """Mean reciprocal rank of the first relevant (grade > 0) document within the top k, as in MTEB's
    ``mrr_at_k`` (0 when none is retrieved). Same inputs as :func:`ndcg_at_k`."""
    return _aggregate(_mrr_one, run, qrels, k, per_query)


def retrieval_scores(
    query_emb: Any,
    doc_emb: Any,
    query_ids: Sequence[Hashable],
    doc_ids: Sequence[Hashable],
    qrels: Qrels,
    ks: Iterable[int] = (5, 10),
    *,
    mrr_k: int = 10,
    normalize: bool = True,
    ignore_identical_ids: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Dense retrieval metrics in **percent** (0-100): ``ndcg@k`` and ``recall@k`` for every k in
    ``ks`` (nDCG@10 is MTEB's main score, nDCG@5 ViDoRe's), plus ``mrr@{mrr_k}``.

    Documents are ranked by cosine (``normalize=True``) or dot-product similarity through
    :func:`chunked_topk` (ties: lower position in ``doc_ids`` first). Queries are evaluated when
    their id is in ``qrels`` (others are skipped, as pytrec_eval does); at least one must be.
    Cutoffs larger than the corpus are clamped to it. ``ignore_identical_ids`` drops a document
    whose id equals the query id from that query's ranking (MTEB's option for e.g. ArguAna).
    Keys: ``ndcg@k`` (ascending k), ``recall@k`` (ascending k), ``mrr@{mrr_k}``.
    """
    queries = _as_2d(query_emb, "query_emb")
    docs = _as_2d(doc_emb, "doc_emb")
    query_ids, doc_ids = list(query_ids), list(doc_ids)
    if len(query_ids) != queries.shape[0] or len(doc_ids) != docs.shape[0]:
        raise ValueError(
            f"got {len(query_ids)} query ids for {queries.shape[0]} query embeddings and "
            f"{len(doc_ids)} doc ids for {docs.shape[0]} doc embeddings"
        )
    if len(set(query_ids)) != len(query_ids) or len(set(doc_ids)) != len(doc_ids):
        raise ValueError("query_ids and doc_ids must be unique")
    if not doc_ids:
        raise ValueError("the corpus is empty")
    ks = _check_ks(ks)
    mrr_k = _check_positive_int(mrr_k, "mrr_k")
    rows = [i for i, qid in enumerate(query_ids) if qid in qrels]
    if not rows:
        raise ValueError("none of query_ids appears in qrels")
    keep = max(ks[-1], mrr_k)
    depth = min(keep + (1 if ignore_identical_ids else 0), len(doc_ids))
    selected = queries[torch.as_tensor(rows, dtype=torch.long, device=queries.device)]
    _, index = chunked_topk(selected, docs, depth, chunk_size=chunk_size, normalize=normalize, device=device)

    run: dict[Hashable, list] = {}
    for row, hits in zip(rows, index.cpu().tolist()):
        qid = query_ids[row]
        ranked = [doc_ids[j] for j in hits]
        if ignore_identical_ids:
            ranked = [doc for doc in ranked if doc != qid]
        run[qid] = ranked[:keep]
    sub_qrels = {query_ids[row]: qrels[query_ids[row]] for row in rows}

    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = 100.0 * ndcg_at_k(run, sub_qrels, k)
    for k in ks:
        out[f"recall@{k}"] = 100.0 * recall_at_k(run, sub_qrels, k)
    out[f"mrr@{mrr_k}"] = 100.0 * mrr_at_k(run, sub_qrels, mrr_k)
    return out


# --------------------------------------------------------------------------------------------
# Semantic textual similarity
# --------------------------------------------------------------------------------------------


def _as_1d_float64(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def rankdata(values: Any) -> np.ndarray:
    """1-based ranks (float64), ties get the average of the ranks they span (``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata as scipy_rankdata

    return scipy_rankdata(_as_1d_float64(values, "values"), method="average").astype(np.float64)


def spearman(pred_scores: Any, gold_scores: Any) -> float:
    """Spearman's rank correlation (-1..1), ``scipy.stats.spearmanr``.

    Returns NaN when either input is constant (undefined, as in scipy, without its warning); raises
    ``ValueError`` on length mismatch, fewer than 2 items, or NaN/inf.
    """
    from scipy.stats import spearmanr

    pred = _as_1d_float64(pred_scores, "pred_scores")
    gold = _as_1d_float64(gold_scores, "gold_scores")
    if pred.shape != gold.shape:
        raise ValueError(f"length mismatch: {pred.size} predictions vs {gold.size} gold scores")
    if pred.size < 2:
        raise ValueError("spearman needs at least 2 pairs")
    if np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return float("nan")
    return float(min(1.0, max(-1.0, float(spearmanr(pred, gold).statistic))))


def paired_cosine(emb1: Any, emb2: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Row-wise cosine similarity ``cos(emb1[i], emb2[i])`` in fp32, as a float64 numpy array."""
    a = _as_2d(emb1, "emb1")
    b = _as_2d(emb2, "emb2")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    out = np.empty(a.shape[0], dtype=np.float64)
    with torch.no_grad():
        for start in range(0, a.shape[0], chunk_size):
            x = _prepare_block(a[start : start + chunk_size], a.device, True)
            y = _prepare_block(b[start : start + chunk_size], a.device, True)
            out[start : start + chunk_size] = (x * y).sum(dim=1).cpu().numpy()
    return out


def sts_scores(emb1: Any, emb2: Any, gold: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """STS score in **percent**: ``{"cosine_spearman": 100 * spearman(cos(emb1_i, emb2_i), gold)}``
    (MTEB's main STS score, the paper's "Spearman correlation based on cosine similarity")."""
    cos = paired_cosine(emb1, emb2, chunk_size=chunk_size)
    return {"cosine_spearman": 100.0 * spearman(cos, gold)}
