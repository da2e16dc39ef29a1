"""What a task's data cost, counted while ``training.data.TaskStream`` reads it, and the rules that stop a run
whose data is unusable.

Nothing is lost silently: an example dropped for bad data (a bad row, an empty text, a missing or undecodable
image, a triplet with too few negatives) is counted by reason and logged (the first ten of each reason, then one
in a thousand); a damaged file or shard (a line that is no JSON, a gzip or parquet file that cannot be read on, a
webdataset shard cut short) is logged with its name and the rows it lost; texts cut at ``max_text_chars`` and each
source's URL fetches are counted. ``DataReport.to_dict()`` is the run's summary of one process
(``TaskStream.report()``, ``training_summary.json``: ``data``), ``merge_data_reports`` that of all processes.

The stop rules, so that no loop spins forever on bad data:

* ``on_bad_row="error"`` stops at the first bad row;
* a source that yields ``max_consecutive_skips`` unusable examples in a row stops the stream with a
  ``DataError`` naming the source and the reasons counted (data that is all bad would otherwise be read forever,
  epoch after epoch, without a single batch);
* URL fetches have a budget per source: failed fetches in a row may cost at most ``max_fetch_failure_seconds`` (a
  source whose URLs all stall stops the run in minutes, not after ``max_consecutive_skips`` x 20 s = 5.6 hours),
  and once it has made ``MIN_FETCHES_FOR_RATE`` fetches, at most ``max_fetch_failure_rate`` of them may fail.

The counts are part of the stream's checkpoint (``state_dict``), so a resumed run reports the whole run.
"""

from __future__ import annotations

import logging
from collections import Counter

from jina_clip_v2.training.sources import DataError

logger = logging.getLogger(__name__)

MIN_FETCHES_FOR_RATE = 100  # URL fetches of a source before max_fetch_failure_rate applies
MAX_LISTED_FILES = 100  # damaged files the merged report names (the counts cover all)
SKIP_REASONS = {  # DataReport.skipped's keys, as errors name them
    "bad_row": "bad row",
    "empty_text": "empty text",
    "missing_image": "missing image",
    "corrupt_image": "undecodable image",
    "too_few_negatives": "too few negatives",
}


class DataReport:
    """The counts of one task stream on one process. ``cfg`` is the task's ``TaskDataConfig`` (its sources'
    labels, ``on_bad_row``, ``max_consecutive_skips`` and the URL fetch budget)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.skipped: Counter = Counter()
        # Per source: the reasons of the unusable examples since its last usable one.
        self.consecutive: dict[int, Counter] = {}
        # Damaged files and shards: {file: {"problem", "rows_lost", "at_least"}}, found while reading (counted in
        # the first epoch: later ones read the same damage again).
        self.damaged: dict[str, dict] = {}
        self.texts_cut = 0  # texts longer than max_text_chars
        # Per source: its URL fetches {"fetches", "failed", "seconds", "failed_in_a_row", "failed_seconds_in_a_row"}.
        self.fetches: dict[int, dict] = {}

    def _label(self, source: int) -> str:
        return self.cfg.source_label(source) if source < len(self.cfg.sources) else f"source {source}"

    def skip(self, reason: str, detail: str = "", *, source: int = 0) -> None:
        """Count (and log, sparingly) an example dropped for bad data; the batch is filled from the next.
        A bad row stops the stream under ``on_bad_row="error"``, and so does the ``max_consecutive_skips``-th
        unusable example in a row from one source."""
        label = self._label(source)
        if reason == "bad_row" and self.cfg.on_bad_row == "error":
            raise DataError(f"{label}: bad row: {detail} (data.on_bad_row=error; 'skip' skips such rows)")
        self.skipped[reason] += 1
        count = self.skipped[reason]
        if count <= 10 or count % 1000 == 0:
            logger.warning("%s: skipping an example (%s, %d so far)%s", label, SKIP_REASONS.get(reason, reason), count,
                           f": {detail}" if detail else "")
        run = self.consecutive.setdefault(source, Counter())
        run[reason] += 1
        total = sum(run.values())
        if total >= self.cfg.max_consecutive_skips:
            reasons = ", ".join(f"{n} {SKIP_REASONS.get(r, r)}" for r, n in run.most_common())
            raise DataError(
                f"{label}: {total} consecutive unusable examples ({reasons}); the last: "
                f"{SKIP_REASONS.get(reason, reason)}{f' ({detail})' if detail else ''}. Fix the data or its "
                "column mapping (data.max_consecutive_skips sets how many in a row stop the run)"
            )

    def usable(self, source: int) -> None:
        """`source` gave a usable example: its run of unusable ones ends."""
        self.consecutive.pop(source, None)

    def count_loss(self, where: str, lost: int, problem: str) -> None:
        """A damaged file's rows (first epoch only: later epochs read the same damage again)."""
        entry = self.damaged.setdefault(where, {"problem": problem, "rows_lost": 0, "at_least": False})
        if lost < 0:  # the rest of the file: how many is unknown
            entry.update(problem=problem, at_least=True)
            lost = 1
        entry["rows_lost"] += lost
        if entry["rows_lost"] == lost:
            logger.warning("%s: damaged: %s", where, problem)

    def count_fetch(self, source: int, seconds: float, ok: bool, detail: str) -> None:
        """One URL fetch of `source`, against its budget (see the module docstring)."""
        stats = self.fetches.setdefault(
            source, {"fetches": 0, "failed": 0, "seconds": 0.0, "failed_in_a_row": 0, "failed_seconds_in_a_row": 0.0}
        )
        stats["fetches"] += 1
        stats["seconds"] += seconds
        if ok:
            stats.update(failed_in_a_row=0, failed_seconds_in_a_row=0.0)
            return
        stats["failed"] += 1
        stats["failed_in_a_row"] += 1
        stats["failed_seconds_in_a_row"] += seconds
        label = self._label(source)
        if stats["failed_seconds_in_a_row"] > self.cfg.max_fetch_failure_seconds:
            raise DataError(
                f"{label}: {stats['failed_in_a_row']} image URL fetches in a row failed, costing "
                f"{stats['failed_seconds_in_a_row']:.0f} s (the last: {detail}); data.max_fetch_failure_seconds="
                f"{self.cfg.max_fetch_failure_seconds:g} bounds the time a source may lose this way"
            )
        rate = stats["failed"] / stats["fetches"]
        if stats["fetches"] >= MIN_FETCHES_FOR_RATE and rate > self.cfg.max_fetch_failure_rate:
            raise DataError(
                f"{label}: {stats['failed']} of its {stats['fetches']} image URL fetches failed ({rate:.0%}; the last: "
                f"{detail}); data.max_fetch_failure_rate={self.cfg.max_fetch_failure_rate:g} bounds the failed share"
            )

    def to_dict(self) -> dict:
        """What the data cost, for the run's summary: skipped examples by reason, damaged files with the rows
        each lost ("at_least": the rest of the file was unreadable), texts cut, URL fetches per source."""
        return {
            "skipped": dict(self.skipped),
            "rows_lost": sum(entry["rows_lost"] for entry in self.damaged.values()),
            "damaged_files": {path: dict(entry) for path, entry in sorted(self.damaged.items())},
            "texts_cut": self.texts_cut,
            "url_fetches": {
                self.cfg.source_label(k) if k < len(self.cfg.sources) else str(k): {
                    "fetches": v["fetches"], "failed": v["failed"], "seconds": round(v["seconds"], 3)
                }
                for k, v in sorted(self.fetches.items())
            },
        }

    # -- checkpointing (the keys of TaskStream.state_dict) ----------------------------------------------
    def state_dict(self) -> dict:
        return {
            "skipped": dict(self.skipped),
            "consecutive": {str(k): dict(v) for k, v in self.consecutive.items()},
            "damaged": dict(self.damaged),
            "texts_cut": self.texts_cut,
            "fetches": {str(k): dict(v) for k, v in self.fetches.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.skipped = Counter(state.get("skipped", {}))
        self.consecutive = {int(k): Counter(v) for k, v in state.get("consecutive", {}).items()}
        self.damaged.update(state.get("damaged", {}))
        self.texts_cut = int(state.get("texts_cut", 0))
        self.fetches = {int(k): dict(v) for k, v in state.get("fetches", {}).items()}


def merge_data_reports(reports: list[dict]) -> dict:
    """`TaskStream.report()`s of several processes as one: counts summed; a damaged file (every process checks
    the shards of every source) counted once, with the most rows any process saw it lose."""
    skipped: Counter = Counter()
    files: dict[str, dict] = {}
    fetches: dict[str, dict] = {}
    for report in reports:
        skipped.update(report["skipped"])
        for path, entry in report["damaged_files"].items():
            if path not in files or entry["rows_lost"] > files[path]["rows_lost"]:
                files[path] = dict(entry)
        for source, stats in report["url_fetches"].items():
            total = fetches.setdefault(source, {"fetches": 0, "failed": 0, "seconds": 0.0})
            for key in total:
                total[key] += stats[key]
    return {
        "skipped": dict(skipped),
        "rows_lost": sum(entry["rows_lost"] for entry in files.values()),
        "damaged_files": dict(sorted(files.items())[:MAX_LISTED_FILES]),
        "damaged_files_count": len(files),
        "texts_cut": sum(report["texts_cut"] for report in reports),
        "url_fetches": fetches,
    }


__all__ = ["MAX_LISTED_FILES", "MIN_FETCHES_FOR_RATE", "SKIP_REASONS", "DataReport", "merge_data_reports"]
