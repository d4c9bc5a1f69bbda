"""The epoch loop of the linear probe and fine-tuning: resume, train, evaluate, save, report.

``run_epochs`` runs epochs ``start .. epochs-1`` of a model whose state is
a pytree, given two callbacks: ``train_epoch`` (one epoch of updates) and
``evaluate`` (top-1 / top-5 on the test split). Around them it

* resumes after the last epoch saved in its checkpoint folder
  (``checkpointing.Checkpointer``, the last two epochs kept, each with a
  JSON ``meta`` of the settings and the history), refusing a folder whose
  epochs were trained under other settings (``check_resumable``);
* logs one line per epoch (loss, learning rates, accuracies, best top-1,
  seconds, ETA) and keeps the history;
* saves every finished epoch and hands the results so far to ``write``
  (the results JSON, rewritten atomically by process 0: ``write_json``);
* stops between batches on SIGTERM/SIGINT (``StopOnSignal``), dropping
  only the unfinished epoch, or after ``stop_after`` epochs of this run.

A resumed run continues with the same state, so it ends as a straight run.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax

from barlow_jax import paths

# train_epoch(epoch, state, stopped) -> (state, [(loss, weight)], {lr name: lr})
TrainEpoch = Callable[[int, Any, Callable[[], bool]], Tuple[Any, Sequence, Dict[str, float]]]


class StopOnSignal:
    """SIGTERM/SIGINT -> a flag the epoch loops check between batches, acknowledged at once.

    The epoch in progress is dropped (epochs are the unit of saving); the
    epochs already finished are in their checkpoint folder, so a rerun of the
    same command resumes after the last one.
    """

    def __init__(self, what: str, log: Callable[[str], None] = print):
        self.what, self.log, self.received, self._old = what, log, None, {}

    def __enter__(self):
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        import signal
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.log(f"{self.what}: received {self.received}; stopping after the current batch "
                     f"(the unfinished epoch is dropped, finished epochs are saved).")

    def __exit__(self, *exc):
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old)


def check_resumable(meta: Dict, expected: Dict, directory: str):
    """Refuses to continue epochs that were trained under different settings."""
    diffs = [k for k in expected if meta.get("setup", {}).get(k) != expected[k]]
    if diffs:
        shown = ", ".join(f"{k}: {meta.get('setup', {}).get(k)!r} saved vs {expected[k]!r} now"
                          for k in diffs[:4])
        raise ValueError(f"{directory} holds epochs trained with other settings ({shown}); "
                         f"delete that folder to start over, or rerun with the saved settings.")


def summarize(history: List[Dict]) -> Dict:
    """best (max top-1 / top-5 over epochs, as BT evaluate.py) and final accuracies."""
    if not history:
        return {"best": None, "final": None}
    best1 = max(history, key=lambda h: h["top1"])
    return {"best": {"top1": best1["top1"], "top1_epoch": best1["epoch"],
                     "top5": max(h["top5"] for h in history)},
            "final": {"top1": history[-1]["top1"], "top5": history[-1]["top5"],
                      "epoch": history[-1]["epoch"]}}


def eta_text(history: List[Dict], start_epoch: int, epochs: int) -> str:
    """'ETA h:mm:ss' from the mean time of this session's epochs."""
    from barlow_jax.metrics import format_seconds
    mine = [h["seconds"] for h in history if h["epoch"] > start_epoch]
    if not mine:
        return "ETA ?"
    return f"ETA {format_seconds(sum(mine) / len(mine) * (epochs - history[-1]['epoch']))}"


def write_json(path: str, payload: Dict):
    """Atomic rewrite of a results file, by process 0 only (local or gs://...)."""
    if jax.process_index() != 0:
        return
    paths.write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def epoch_checkpoints(directory: str):
    """The Checkpointer of an evaluation's epochs: ``directory/<epoch>/{state,meta}``, last two."""
    from barlow_jax import checkpointing
    return checkpointing.Checkpointer(directory, keep=2, subdir="", unit="epoch",
                                      keep_setting=None)


def run_epochs(what: str, epochs: int, state, setup: Dict, *, train_epoch: TrainEpoch,
               evaluate: Callable[[Any], Tuple[float, float]],
               directory: Optional[str] = None, stop_after: int = 0,
               write: Optional[Callable[[Dict], None]] = None,
               log: Callable[[str], None] = print) -> Tuple[Dict, Any, Optional[str]]:
    """Trains (or resumes) ``epochs`` epochs of ``state``; see the module doc.

    Args:
      what: the name that starts every log line, e.g. 'linear probe' or 'semisup 1%'.
      epochs: the total number of epochs.
      state: the initial state (a pytree placed on the devices); also the
        template a resume restores into.
      setup: JSON-able settings, saved with every epoch; a resume whose saved
        setup differs is refused with one sentence (ValueError).
      train_epoch: ``(epoch, state, stopped) -> (state, losses, lrs)`` runs
        epoch ``epoch`` (0-based) and returns the new state, ``[(loss,
        weight)]`` per batch and ``{name: learning rate}`` for the record;
        it should return early once ``stopped()`` is True (that epoch's
        state is then dropped).
      evaluate: ``state -> (top1, top5)`` in percent on the test split.
      directory: the checkpoint folder (local or gs://...); None saves nothing
        and never resumes.
      stop_after: end this run (resumably) after this many epochs; 0 runs to the end.
      write: called with the results after every finished epoch and once at
        the end (e.g. to rewrite a JSON file).
      log: receives every progress line.

    Returns:
      ``(results, state, stopped_by)``: results = ``{'best', 'final',
      'epochs' (one record per epoch), 'setup', 'complete'}``, the state after
      the last finished epoch, and the signal that stopped the run (or None).
    """
    history: List[Dict] = []
    start = 0
    ckpt = epoch_checkpoints(directory) if directory else None

    def results():
        return dict(summarize(history), epochs=history, setup=setup,
                    complete=bool(history) and history[-1]["epoch"] == epochs)

    signal_stop = StopOnSignal(what, log)
    try:
        if ckpt is not None and ckpt.latest_step():
            start = int(ckpt.latest_step())
            meta = ckpt.restore_meta(start)
            check_resumable(meta, setup, ckpt.directory)
            state = ckpt.restore(state, start)
            history = list(meta["history"])
            log(f"{what}: resumed after epoch {start} from {ckpt.directory}")
        with signal_stop:
            for epoch in range(start, epochs):
                t0 = time.perf_counter()
                new_state, losses, lrs = train_epoch(
                    epoch, state, lambda: signal_stop.received is not None)
                if signal_stop.received:
                    break  # the unfinished epoch's updates are dropped
                state = new_state
                loss = float(sum(float(l) * n for l, n in losses)
                             / max(sum(n for _, n in losses), 1.0))
                top1, top5 = evaluate(state)
                record = {"epoch": epoch + 1, "loss": loss, **lrs, "top1": top1, "top5": top5,
                          "seconds": time.perf_counter() - t0}
                history.append(record)
                best = max(h["top1"] for h in history)
                lr_text = "/".join(f"{v:.4g}" for v in lrs.values())
                log(f"{what} epoch {epoch + 1}/{epochs} | loss {loss:.4f} | lr {lr_text} | "
                    f"top1 {top1:.2f} | top5 {top5:.2f} | best top1 {best:.2f} | "
                    f"{record['seconds']:.1f}s | {eta_text(history, start, epochs)}")
                if ckpt is not None:
                    ckpt.save(epoch + 1, state, {"setup": setup, "history": history})
                    ckpt.wait()
                if write is not None:
                    write(results())
                if stop_after and epoch + 1 - start >= stop_after and epoch + 1 < epochs:
                    break
    finally:
        if ckpt is not None:
            ckpt.close()
    if write is not None:
        write(results())
    if signal_stop.received:
        done = history[-1]["epoch"] if history else 0
        log(f"{what}: stopped by {signal_stop.received} after epoch {done}/{epochs}"
            + (f", saved in {ckpt.directory}; rerun the same command to resume." if ckpt
               else "."))
    return results(), state, signal_stop.received
