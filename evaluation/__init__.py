"""Evaluation code for jina-clip-v2: the metrics and benchmark runners behind the paper's tables.

``evaluation.metrics`` holds the model-free metrics (exact chunked top-k search, CLIP Benchmark
Recall@k, nDCG/recall/MRR as in pytrec_eval/MTEB, and Spearman correlation for STS).
"""
