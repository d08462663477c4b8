"""The ``reranker_model`` step of the ``cpu`` profile: onnxruntime on CPU, without Triton.

Triton's dynamic batcher hands over several requests at once; their rows are concatenated,
scored in length-sorted sub-batches, then split back per request. ``session_options`` is also
what the export's validation and the benchmarks use, so every onnxruntime here runs alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import Abandoned, BadRequest

if TYPE_CHECKING:
    import onnxruntime as ort

OUTPUT_NAME = "logits"
GRAPH_OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def session_options(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    graph_optimization_level: str = "ORT_ENABLE_ALL",
    allow_spinning: bool = False,
) -> ort.SessionOptions:
    """onnxruntime options for a transformer encoder on CPU cores shared with other work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Intra-op threads parallelise each matmul over the cores: that is where a transformer's
    # time goes. 0 lets onnxruntime take one thread per physical core.
    options.intra_op_num_threads = intra_op_threads
    # Sequential execution: an encoder graph is one chain of layers with no independent
    # branches worth running in parallel, and inter-op threads would only compete with the
    # intra-op pool (and the tokenizer step) for the same cores.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = inter_op_threads
    if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
        raise ValueError(
            f"unknown graph_optimization_level {graph_optimization_level!r}; "
            f"one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
        )
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, graph_optimization_level)
    # Spinning workers burn a core for a while after each run; on a CPU shared with the
    # tokenizer instances that time is better given back.
    spin = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    return options


def check_inputs(arrays: Mapping[str, np.ndarray | None], names: Sequence[str]) -> dict[str, np.ndarray]:
    """One request's model inputs, checked: every name present, 2-D [rows, length], one shape, int64."""
    checked = {}
    for name in names:
        array = arrays.get(name)
        if array is None:
            raise BadRequest(f"missing input {name!r}")
        if array.ndim != 2:
            raise BadRequest(f"input {name!r} must be [rows, length], got shape {list(array.shape)}")
        checked[name] = array.astype(np.int64, copy=False)
    shapes = {a.shape for a in checked.values()}
    if len(shapes) != 1:
        raise BadRequest(f"inputs {list(names)} must share one shape, got {sorted(shapes)}")
    return checked


def concatenate_padded(
    batch: Sequence[Mapping[str, np.ndarray]], pad_values: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Several requests' inputs as one feed, right-padded to the longest; also each request's rows.

    The tokenizer pads to length buckets, so batched requests normally share a length (Triton
    merges only matching shapes); padding anyway means a mismatch cannot fail the batch.
    ``pad_values`` gives the pad id per input (default 0: attention_mask, token_type_ids).
    """
    names = list(batch[0])
    width = max(inputs[names[0]].shape[1] for inputs in batch)
    feed = {}
    for name in names:
        parts = []
        for inputs in batch:
            a = inputs[name]
            if a.shape[1] < width:
                a = np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad_values.get(name, 0))
            parts.append(a)
        feed[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return feed, [inputs[names[0]].shape[0] for inputs in batch]


def sub_batches(lengths: np.ndarray, rows_per_run: int) -> list[np.ndarray]:
    """Row indices per onnxruntime run: shortest rows first, at most ``rows_per_run`` a run.

    On CPU, padding (up to the bucket and to the longest row of the batch) is computed like real
    tokens, and attention grows with the square of it; so rows of like length run together, each
    run cut to its own longest row. ``rows_per_run <= 0``: one run of every row, in order.
    """
    total = len(lengths)
    if rows_per_run <= 0 or total <= rows_per_run:
        return [np.arange(total)]
    order = np.argsort(lengths, kind="stable")
    return list(np.array_split(order, -(-total // rows_per_run)))


def _wanted(_: int) -> str | None:
    return None


def _shifted(why: Callable[[int], str | None], index: int, _: int) -> str | None:
    """``why`` for request ``index`` of the batch, asked as request 0 of a batch of one."""
    return why(index)


class OnnxScorer:
    """An onnxruntime session that scores rows of token ids: logits FP32 [rows, 1]."""

    def __init__(
        self,
        model_path: str,
        *,
        options: ort.SessionOptions,
        declared_inputs: Sequence[str],
        pad_token_id: int = 1,
        sub_batch_rows: int = 8,
    ) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        missing = [name for name in self.input_names if name not in declared_inputs]
        if missing:
            raise ValueError(f"the ONNX model needs inputs {missing} that config.pbtxt does not declare")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else next(iter(outputs))
        shape = outputs[self.output_name]
        if len(shape) > 2 or (len(shape) == 2 and isinstance(shape[1], int) and shape[1] != 1):
            raise ValueError(f"the ONNX output {self.output_name!r} must be one logit per row, got shape {shape}")
        self.pad_values = {"input_ids": pad_token_id}  # attention_mask, token_type_ids pad 0
        self.sub_batch_rows = sub_batch_rows
        self.rows_scored = 0  # rows sent through onnxruntime since start (work done, for tests and stats)
        self.rows_skipped = 0  # rows not computed because their request was abandoned

    def score_requests(
        self,
        batch: Sequence[Mapping[str, np.ndarray]],
        *,
        abandoned: Callable[[int], str | None] | None = None,
    ) -> list[np.ndarray | Exception]:
        """Logits per request; a request whose rows fail is an exception in its place, alone.

        One request's rows can fail the whole run (ids outside the vocabulary from a direct
        caller, say): then each request is scored alone so that only that one fails.
        ``abandoned(i)`` says why request ``i`` is no longer wanted (cancelled, past its deadline)
        or ``None``; it is asked before each sub-batch, and an abandoned request's remaining rows
        are skipped: its place holds ``Abandoned``.
        """
        why = abandoned or _wanted
        try:
            return self._score_together(batch, why)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        results: list[np.ndarray | Exception] = []
        for index, inputs in enumerate(batch):
            try:
                results.extend(self._score_together([inputs], functools.partial(_shifted, why, index)))
            except Exception as single:
                results.append(single)
        return results

    def _score_together(
        self, batch: Sequence[Mapping[str, np.ndarray]], abandoned: Callable[[int], str | None]
    ) -> list[np.ndarray | Exception]:
        feed, rows = concatenate_padded(batch, self.pad_values)
        owners = np.repeat(np.arange(len(batch)), rows)  # the request each row belongs to
        reasons: dict[int, str] = {}

        def skip() -> np.ndarray:
            for request in range(len(batch)):
                if request not in reasons and (reason := abandoned(request)) is not None:
                    reasons[request] = reason
            return np.isin(owners, list(reasons))

        logits = self.score(feed, skip=skip)
        parts: list[np.ndarray | Exception] = list(np.split(logits, np.cumsum(rows)[:-1], axis=0))
        for request, reason in reasons.items():
            parts[request] = Abandoned(reason)
        return parts

    def score(self, feed: Mapping[str, np.ndarray], *, skip: Callable[[], np.ndarray] | None = None) -> np.ndarray:
        """Logits [rows, 1] of one feed, in row order, scored in length-sorted sub-batches.

        ``skip()``, asked before each sub-batch, marks rows not to compute (their logits stay NaN).
        """
        total = next(iter(feed.values())).shape[0]
        mask = feed.get("attention_mask")
        if mask is None:
            chunks = [np.arange(total)]
            lengths = None
        else:
            lengths = mask.sum(axis=1)  # rows are right-padded: the mask's sum is the row's length
            chunks = sub_batches(lengths, self.sub_batch_rows)
        logits = np.full((total, 1), np.nan, dtype=np.float32)
        for all_rows in chunks:
            chunk = all_rows
            if skip is not None:
                chunk = all_rows[~skip()[all_rows]]
                self.rows_skipped += len(all_rows) - len(chunk)
                if len(chunk) == 0:
                    continue
            width = max(int(lengths[chunk].max()), 1) if lengths is not None else None
            run_feed = {n: a[chunk, :width] for n, a in feed.items()}
            (out,) = self.session.run([self.output_name], run_feed)
            logits[chunk] = np.asarray(out, dtype=np.float32).reshape(-1, 1)
            self.rows_scored += len(chunk)
        return logits
