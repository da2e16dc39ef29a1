"""The training loop of one stage: ``Stage(cfg, resume=...).run()``.

``Stage`` builds the run (accelerator, model, processor, adapters, ``TrainStep``), prepares the output
folder, resumes from a checkpoint if asked, streams the two tasks' batches, calls the one ``TrainStep``
per step, switches the resolution where configured, logs a record every ``train.log_every`` steps, writes
an atomic checkpoint every ``train.checkpoint_every`` steps and exports the model at the end.

Outputs under ``output_dir``: ``model/`` (the Hub-ready export with ``training_summary.json``; the next
stage's ``model.init_from`` may name ``output_dir`` itself), ``checkpoints/step_XXXXXXX`` (resumable,
atomic, last ``train.keep_last`` kept), ``metrics.jsonl`` (one line per logged step), ``logs/``
(trackers), ``config.yaml`` (the resolved config).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger

from jina_clip_v2._io import atomic_write
from jina_clip_v2.training import checkpoint as ckpt
from jina_clip_v2.training.batches import ImageTextBatch, TextBatch
from jina_clip_v2.training.builders import apply_peft, build_model
from jina_clip_v2.training.config import ConfigError, StageConfig, config_to_dict, config_to_yaml, tracker_config
from jina_clip_v2.training.demo_data import resolve_sources
from jina_clip_v2.training.export import export_stage, gathered_model, stage_summary
from jina_clip_v2.training.flops import detect_peak_tflops, step_flops
from jina_clip_v2.training.launch import build_accelerator, compute_dtype
from jina_clip_v2.training.metrics import MetricsWindow, append_record, progress_postfix, truncate_metrics
from jina_clip_v2.training.resolution import set_image_size
from jina_clip_v2.training.step import TrainStep

__all__ = ["MAX_SKIPPED_IN_A_ROW", "NonFiniteLossError", "Stage"]

logger = get_logger(__name__)

MAX_SKIPPED_IN_A_ROW = 100  # train.on_nonfinite_loss=skip: then the weights themselves are broken


class NonFiniteLossError(FloatingPointError):
    """A step's loss is NaN / inf (``train.on_nonfinite_loss``)."""


class Stage:
    """Everything one stage needs, built from a ``StageConfig``; ``run()`` trains and exports, ``step``
    (the ``TrainStep``) is usable on its own (the distributed-equivalence test computes single-process
    reference losses with it)."""

    def __init__(self, cfg: StageConfig, *, resume: str | None = None):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.accelerator = build_accelerator(cfg, self.output_dir)
        acc = self.accelerator
        for task in (cfg.data.text, cfg.data.image_text):
            if task.batch_size % acc.num_processes:
                raise ConfigError(
                    f"global batch size {task.batch_size} ({task.kind}) is not divisible by the "
                    f"{acc.num_processes} processes"
                )
        self.model, self.processor = build_model(cfg.model, cfg.train.seed)
        if cfg.peft is not None:
            apply_peft(self.model, cfg.peft)
        self.start_image_size = self.model.config.vision_config.image_size
        # A resumed run past the resolution switch continues at the new size: set it before the
        # optimizer and the wrappers see the parameters, so the checkpoint's shapes fit.
        self.damaged: list[tuple[Path, list[str]]] = []  # checkpoints --resume auto skipped
        self.resume_path = self._find_resume(resume)
        if self.resume_path is not None:
            state = ckpt.read_trainer_state(self.resume_path)
            if state.get("image_size"):
                self.model.set_image_size(int(state["image_size"]))
        self.step = TrainStep(cfg, self.model, acc)
        if cfg.train.on_nonfinite_loss == "skip":
            self.step.update_filter = self._finite_update
        self.streams: dict = {}
        self.samples_seen = {"text": 0, "image_text": 0}
        self.skipped_steps: list[int] = []  # steps whose update train.on_nonfinite_loss=skip dropped
        self.current_step = 0  # the step being computed (1-based, as logged)
        self.last_checkpoint: Path | None = self.resume_path
        self.logged: list[dict] = []  # the first and the last logged record before a resume
        self.window: MetricsWindow | None = None  # the logging window being summed
        peak, _ = detect_peak_tflops(acc.device, compute_dtype(acc), cfg.train.peak_tflops)
        self.peak_tflops = peak

    def _find_resume(self, resume: str | None) -> Path | None:
        """The checkpoint to resume from: ``auto`` takes the newest intact one under ``checkpoints/``
        (damaged newer ones are logged and set aside at the start of ``run``); a named folder must be
        intact (``CheckpointError`` naming every problem)."""
        if resume in (None, "", "none", "no"):
            return None
        if resume == "auto":
            path, self.damaged = ckpt.find_resumable(self.checkpoint_root)
            for bad, problems in self.damaged:
                logger.warning("--resume auto: skipping %s: %s", bad.name, "; ".join(problems))
            if path is None and self.damaged:
                raise ckpt.CheckpointError(
                    f"--resume auto: no intact checkpoint in {self.checkpoint_root} ("
                    + "; ".join(f"{bad.name}: {problems[0]}" for bad, problems in self.damaged)
                    + "); resume from another folder, or start over with train.overwrite_output_dir=true"
                )
            if path is None:
                logger.info("--resume auto: no checkpoint in %s, starting from scratch", self.checkpoint_root)
            else:
                newer = f" (newer ones are damaged: {', '.join(bad.name for bad, _ in self.damaged)})" if self.damaged else ""
                logger.info("--resume auto: resuming from %s%s", path.name, newer)
            return path
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint folder")
        ckpt.read_trainer_state(path)  # verifies: a damaged or incomplete folder is refused here
        return path

    # -- data ------------------------------------------------------------------------------------------

    def build_streams(self) -> None:
        """One batch stream per task for this process, at the current resolution."""
        from jina_clip_v2.training.data import TaskDataConfig, build_task_stream

        cfg, acc = self.cfg, self.accelerator
        demo_dir = Path(cfg.data.demo_dir) if cfg.data.demo_dir else self.output_dir / "demo_data"
        with acc.main_process_first():
            for name, task in (("text", cfg.data.text), ("image_text", cfg.data.image_text)):
                data_cfg = TaskDataConfig(
                    kind=task.kind,
                    sources=resolve_sources(task.sources, demo_dir, cfg.data.demo_langs),
                    batch_size=task.batch_size // acc.num_processes,
                    max_length=task.max_length,
                    image_size=self.model.config.vision_config.image_size if name == "image_text" else None,
                    num_negatives=task.num_negatives,
                    shuffle_buffer=task.shuffle_buffer,
                    seed=task.seed,
                    max_consecutive_skips=cfg.data.max_consecutive_skips,
                    on_bad_row=cfg.data.on_bad_row,
                    name=f"data.{name}",
                    query_instruction=task.query_instruction or "",
                    max_text_chars=cfg.data.max_text_chars,
                    max_fetch_failure_seconds=cfg.data.max_fetch_failure_seconds,
                    max_fetch_failure_rate=cfg.data.max_fetch_failure_rate,
                )
                self.streams[name] = build_task_stream(
                    data_cfg, self.processor, rank=acc.process_index, world_size=acc.num_processes, train=True,
                    exact_resume=task.exact_resume, num_threads=task.num_threads,
                )

    def data_report(self) -> dict:
        """The streams' reports (`TaskStream.report`) of all processes, summed (a collective), with one warning
        per task that lost rows or skipped examples: what the data cost is never silent."""
        from accelerate.utils import gather_object

        from jina_clip_v2.training.data_report import merge_data_reports

        local = {name: stream.report() for name, stream in self.streams.items()}
        reports = gather_object([local]) if self.accelerator.num_processes > 1 else [local]
        merged = {name: merge_data_reports([r[name] for r in reports if name in r]) for name in local}
        for name, report in merged.items():
            if report["rows_lost"] or report["skipped"]:
                logger.warning(
                    "data.%s: %d rows lost in %d damaged files, %d examples skipped (%s); see training_summary.json",
                    name, report["rows_lost"], report["damaged_files_count"], sum(report["skipped"].values()),
                    ", ".join(f"{n} {reason}" for reason, n in sorted(report["skipped"].items())), main_process_only=True,
                )
        return merged

    def set_image_size(self, image_size: int) -> None:
        """The resolution switch: the model, the optimizer state and the wrappers (``training.resolution``),
        and the image stream's crops."""
        set_image_size(self.step, image_size)
        if "image_text" in self.streams:
            self.streams["image_text"].set_image_size(image_size)

    # -- the run ---------------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        self._prepare_output_dir()
        self.build_streams()
        start_step = 0
        metrics_path = self.output_dir / "metrics.jsonl"
        acc.init_trackers(f"stage{cfg.stage}", config=tracker_config(cfg) if acc.is_main_process else None)
        # Resuming restores the RNG states: nothing may draw random numbers between it and the loop.
        if self.resume_path is not None:
            trainer_state, data_state = ckpt.load_checkpoint(acc, self.resume_path, self.step)
            start_step = int(trainer_state["step"])
            self.samples_seen = dict(trainer_state.get("samples_seen", self.samples_seen))
            self.skipped_steps = list(trainer_state.get("skipped_steps", []))
            # The summary's first losses are the run's, not the resumed part's (and with nothing left to
            # log, its last ones are the checkpoint's).
            self.logged = [r for r in (trainer_state.get("first_record"), trainer_state.get("last_record")) if r]
            if len(self.logged) == 2 and self.logged[0]["step"] == self.logged[1]["step"]:
                self.logged.pop()
            self.window = self._window_from_state(trainer_state.get("window"))
            for name, stream in self.streams.items():
                if name in data_state:
                    stream.load_state_dict(data_state[name])
                stream.set_image_size(self.model.config.vision_config.image_size)
            if acc.is_main_process:
                truncate_metrics(metrics_path, start_step)
            logger.info("resumed from %s at step %d", self.resume_path, start_step)
        else:
            from accelerate.utils import set_seed

            set_seed(cfg.train.seed, device_specific=True)
        history = self._loop(start_step, metrics_path)
        acc.wait_for_everyone()
        summary = stage_summary(cfg, self.step, history, self.samples_seen, self.start_image_size, self.output_dir)
        summary["data"] = self.data_report()
        if cfg.train.export:
            model = gathered_model(self.step, cfg, self.processor)  # a collective under FSDP / DeepSpeed
            if acc.is_main_process:
                export_stage(model, self.processor, self.step, cfg, self.output_dir / "model", summary)
        acc.wait_for_everyone()
        self._release_wrappers()
        acc.end_training()
        return summary

    def _release_wrappers(self) -> None:
        """Free the distributed wrapper (DDP, FSDP, DeepSpeed) while every rank is still here, before `end_training`
        destroys the process group. A 2-rank gloo run on CPU once hung after printing its summary, in a destructor
        run as the Stage was freed (py-spy: native code under `return main(argv)`); the wrapper's reducer, which holds
        the already destroyed group, is the likely one. The bare model stays (`step.encoder`)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            encoder = acc.unwrap_model(self.step.encoder)
            self.step.encoder = None
            acc.free_memory()  # the accelerator's references too, then a garbage collection
            self.step.encoder = encoder
            acc.wait_for_everyone()

    def _prepare_output_dir(self) -> None:
        acc = self.accelerator
        existing = ckpt.list_checkpoints(self.checkpoint_root)
        if existing and self.resume_path is None and not self.cfg.train.overwrite_output_dir:
            raise FileExistsError(  # on every rank, so none waits for the others
                f"{self.output_dir} already holds checkpoints ({existing[-1][1].name}); resume with "
                "--resume auto, pick another output_dir, or set train.overwrite_output_dir=true"
            )
        acc.wait_for_everyone()
        if acc.is_main_process:
            if existing and self.resume_path is None:
                shutil.rmtree(self.checkpoint_root)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_stale(self.output_dir)
            for bad, _ in self.damaged:  # out of the listing, so that pruning never keeps them over good ones
                aside = ckpt.set_aside(bad)
                logger.warning("moved the damaged checkpoint %s to %s", bad.name, aside.name)
            if self.resume_path is None:
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            with atomic_write(self.output_dir / "config.yaml") as handle:
                handle.write(config_to_yaml(self.cfg))
        acc.wait_for_everyone()

    def _loop(self, start_step: int, metrics_path: Path) -> list[dict]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        total, switch = cfg.train.steps, cfg.train.resolution_switch
        bar = tqdm(
            total=total, initial=start_step, desc=f"stage {cfg.stage}", dynamic_ncols=True,
            disable=not (acc.is_main_process and cfg.train.progress_bar),
        )
        history: list[dict] = list(self.logged)
        self.window, window_start = self.window or MetricsWindow(), time.perf_counter()
        window = self.window
        pending: list[tuple[int, dict]] = []  # (step, loss terms) not yet checked to be finite
        try:  # the bar closed before an error's line, not after it at exit
            for step in range(start_step, total):
                if switch is not None and step == switch.at_step:
                    self.set_image_size(switch.image_size)
                text = TextBatch.from_stream(next(self.streams["text"]))
                image = ImageTextBatch.from_stream(next(self.streams["image_text"]))
                if step < cfg.train.dump_batches:
                    self._dump_batches(step, text, image)
                self.current_step = done = step + 1
                output = self.step(text, image)
                if not self.skipped_steps or self.skipped_steps[-1] != done:
                    window.add(output, self.step_flops(text, image))
                    pending.append((done, output.terms()))
                self.samples_seen["text"] += text.rows * acc.num_processes
                self.samples_seen["image_text"] += image.rows * acc.num_processes
                log_now = done % cfg.train.log_every == 0 or done == total
                save_now = done % cfg.train.checkpoint_every == 0
                if log_now or save_now:
                    self._check_finite(pending)  # before anything is logged or saved
                    pending = []
                if log_now and window.steps:
                    record = self._log(done, window, time.perf_counter() - window_start)
                    history.append(record)
                    self.logged = [history[0], record]
                    if acc.is_main_process:
                        append_record(metrics_path, record)
                        bar.set_postfix(progress_postfix(record), refresh=False)
                    self.window = window = MetricsWindow()
                    window_start = time.perf_counter()
                bar.update(1)
                if save_now:
                    self.last_checkpoint = self.save_checkpoint(done)
        finally:
            bar.close()
        return history

    # -- non-finite losses ---------------------------------------------------------------------------------

    def _check_finite(self, pending: list[tuple[int, dict]]) -> None:
        """Stop at the first of ``pending``'s steps whose loss is not finite on any process (a collective:
        every process checks the same steps; one device sync for all of them)."""
        if not pending:
            return
        keys = sorted(pending[0][1])
        values = torch.stack([torch.stack([terms[k].detach().float() for k in keys]) for _, terms in pending])
        acc = self.accelerator
        if acc.num_processes > 1:
            values = acc.reduce(values.to(acc.device), reduction="mean")
        finite = torch.isfinite(values).all(dim=1).cpu()
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0])
        raise NonFiniteLossError(self._nonfinite_message(pending[first][0], dict(zip(keys, values[first].tolist()))))

    @staticmethod
    def _loss_parts(values: dict[str, float]) -> str:
        return ", ".join(f"{k}={v:.6g}" for k, v in values.items())

    def _nonfinite_message(self, step: int, values: dict[str, float]) -> str:
        parts = self._loss_parts(values)
        kept = self.last_checkpoint.name if self.last_checkpoint is not None else "none yet"
        return (
            f"step {step}: the loss is not finite ({parts}); the run stops before logging or saving it "
            f"(train.on_nonfinite_loss={self.cfg.train.on_nonfinite_loss}; 'skip' skips such steps' updates). "
            f"Last good checkpoint: {kept}"
        )

    def _finite_update(self, output) -> bool:
        """``TrainStep.update_filter`` for train.on_nonfinite_loss=skip: False (skip the update) when the
        loss is not finite on any process. A collective and a device sync every step."""
        terms = output.terms()
        values = torch.stack([terms[k].detach().float() for k in sorted(terms)])
        acc = self.accelerator
        if acc.num_processes > 1:
            values = acc.reduce(values.to(acc.device), reduction="mean")
        if bool(torch.isfinite(values).all()):
            return True
        step = self.current_step
        in_a_row = 1
        while in_a_row <= len(self.skipped_steps) and self.skipped_steps[-in_a_row] == step - in_a_row:
            in_a_row += 1
        self.skipped_steps.append(step)
        values = dict(zip(sorted(terms), values.tolist()))
        if in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteLossError(f"{in_a_row} steps in a row had a non-finite loss; the last: "
                                     + self._nonfinite_message(step, values))
        logger.warning("step %d: the loss is not finite (%s): its update is skipped (train.on_nonfinite_loss=skip)",
                       step, self._loss_parts(values))
        return False

    def step_flops(self, text: TextBatch, image: ImageTextBatch) -> dict[str, float]:
        """``training.flops.step_flops`` of this process's step (what the benchmark counts as well)."""
        loss = self.cfg.loss
        return step_flops(
            self.model.config, text, image, dims=self.step.dims, world_size=self.accelerator.num_processes,
            unified_views=(2 if loss.ssl_views else 0) if loss.unified_batch else None,
            gradient_checkpointing=self.cfg.model.gradient_checkpointing, grad_cache=self.step.grad_cache.enabled,
        )

    def _log(self, step: int, window: MetricsWindow, seconds: float) -> dict:
        record = window.record(self.accelerator, step, seconds, self.peak_tflops)
        for name, tau in self.step.temperatures.values().items():
            record[f"temperature/{name}"] = tau
        for group in self.step.optimizer.param_groups:
            record.setdefault(f"lr/{group.get('tower', 'all')}", group["lr"] / group.get("lr_scale", 1.0))
        record["image_size"] = self.model.config.vision_config.image_size
        record["max_length/text"] = self.streams["text"].max_length
        if self.step.last_grad_norm is not None:
            record["grad_norm"] = float(self.step.last_grad_norm)
        if self.skipped_steps:
            record["skipped_updates"] = len(self.skipped_steps)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        return record

    # -- checkpoints -----------------------------------------------------------------------------------

    def save_checkpoint(self, step: int) -> Path:
        return ckpt.save_checkpoint(
            self.accelerator,
            self.checkpoint_root,
            step,
            parts=self.step,
            data_state={name: stream.state_dict() for name, stream in self.streams.items()},
            trainer_state={
                "stage": self.cfg.stage,
                "step": step,
                "samples_seen": dict(self.samples_seen),
                "skipped_steps": list(self.skipped_steps),
                "first_record": self.logged[0] if self.logged else None,
                "last_record": self.logged[-1] if self.logged else None,
                "window": self._window_state(),
                "image_size": self.model.config.vision_config.image_size,
                "config": config_to_dict(self.cfg),
            },
            keep_last=self.cfg.train.keep_last,
        )

    def _window_state(self) -> dict | None:
        """The logging window's sums so far (a checkpoint between two logs: the resumed run logs the same
        record at the window's end)."""
        window = self.window
        if window is None or not window.steps:
            return None
        return {
            "steps": window.steps,
            "losses": {k: [float(v), str(v.dtype).removeprefix("torch.")] for k, v in window.losses.items()},
            "counts": window.counts.tolist(),
        }

    def _window_from_state(self, state: dict | None) -> MetricsWindow:
        window = MetricsWindow()
        if state:
            device = self.accelerator.device
            window.steps = int(state["steps"])
            window.losses = {k: torch.tensor(v, dtype=getattr(torch, dtype), device=device)
                             for k, (v, dtype) in state["losses"].items()}
            window.counts = torch.tensor(state["counts"], dtype=window.counts.dtype)
        return window

    def _dump_batches(self, step: int, text: TextBatch, image: ImageTextBatch) -> None:
        folder = self.output_dir / "debug"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"text": text.to_dict(), "image_text": image.to_dict()},
            folder / f"batch_step{step}_rank{self.accelerator.process_index}.pt",
        )
