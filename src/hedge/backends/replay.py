"""Replay deployments: answer from a recorded multi-model data set instead of calling a model.

This module owns the recording format and the backend that serves it. A recording is a folder
holding `outcomes.jsonl` (one row per prompt and model: `prompt_id, task, model, correct,
input_tokens, output_tokens, cost_usd` and, when it was kept, the model's `response`) and,
next to it, `prompts.jsonl` (`prompt_id, task, prompt` and optionally `split_routerdc`,
`oracle_model`). Both may be gzipped (`.jsonl.gz`).

A `ReplayBackend` answers a request with the recorded model's response to the same prompt and
the recorded token counts as usage, so the gateway's accounting prices it exactly as it would
price the live call. The prompt is found from the request's last user message, either:
- its text, equal to a recorded prompt's `prompt` (surrounding whitespace ignored), or
- by the prompt-id convention: the message is exactly a recorded `prompt_id`
  (e.g. `routerbench/arc-challenge.test.1`). No header is involved, so any OpenAI client can
  use it; the harness uses it for prompts whose text is recorded more than once.

Sampling parameters (temperature, max_tokens...) are ignored: the answer is the one recorded,
as it was recorded. What the recording cannot answer is never invented:
- a prompt (or a model's row for it) that is not recorded is a non-retryable `UpstreamError`;
- a recorded row without response text (long answers such as MBPP code are not kept) raises
  `NotRecorded`: the answer, and so any validator's signal, is not in the recording.
The backend never puts a row's `correct` into an answer; scoring is `hedge.replay`'s job.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hedge.backends.base import DeploymentStatus, State
from hedge.config import ReplayDeployment
from hedge.errors import HedgeError, UpstreamError
from hedge.types import ChatRequest, ChatResponse, Choice, Chunk, Usage

STREAM_PIECE_CHARS = 16  # a replayed stream sends the recorded answer in pieces of this size


class NotRecorded(HedgeError):
    """The recording holds the row but not the text a request needs (e.g. MBPP code answers
    were not stored). Ends the request: there is nothing honest to fail over to."""

    status = 422
    type = "invalid_request_error"
    code = "signal_not_recorded"


class RecordingError(Exception):
    """A recording file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class RecordedPrompt:
    prompt_id: str
    dataset: str | None
    task: str | None
    split: str | None  # the recording's own train/test split (`split_routerdc`), if any
    text: str | None
    oracle_model: str | None


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    prompt_id: str
    task: str | None
    model: str
    correct: float | None
    input_tokens: int
    output_tokens: int | None
    cost_usd: float | None
    response: str | None

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.input_tokens, completion_tokens=self.output_tokens or 0)


class Recording:
    """One recorded data set, indexed by (prompt_id, model) and by prompt text."""

    def __init__(
        self,
        path: Path,
        prompts: dict[str, RecordedPrompt],
        outcomes: dict[tuple[str, str], RecordedOutcome],
    ) -> None:
        self.path = path
        self.prompts = prompts
        self.outcomes = outcomes
        self.models: tuple[str, ...] = tuple(sorted({m for _, m in outcomes}))
        by_text: dict[str, list[str]] = {}
        for p in prompts.values():
            if p.text is not None:
                by_text.setdefault(p.text.strip(), []).append(p.prompt_id)
        self._by_text = {t: tuple(ids) for t, ids in by_text.items()}

    def outcome(self, prompt_id: str, model: str) -> RecordedOutcome | None:
        return self.outcomes.get((prompt_id, model))

    def ids_for_text(self, text: str) -> tuple[str, ...]:
        return self._by_text.get(text.strip(), ())

    def resolve(self, message: str) -> str:
        """The prompt_id a user message stands for (see the module docstring). Raises
        `LookupError` naming the problem when there is none, or more than one."""
        if message in self.prompts:
            return message
        ids = self.ids_for_text(message)
        if len(ids) == 1:
            return ids[0]
        head = message.strip().replace("\n", " ")[:80]
        if not ids:
            raise LookupError(f"the prompt '{head}...' is not in the recording {self.path}")
        raise LookupError(
            f"the prompt '{head}...' is recorded {len(ids)} times ({', '.join(ids)}): send its "
            "prompt_id as the message instead"
        )

    def request_text(self, prompt_id: str) -> str:
        """What to send so that a replay backend finds this prompt: its text when that is
        unique in the recording, else the prompt_id itself."""
        text = self.prompts[prompt_id].text
        if text is not None and self.ids_for_text(text) == (prompt_id,):
            return text
        return prompt_id


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    for n, line in enumerate(data.splitlines(), 1):
        if line.strip():
            row = orjson.loads(line)
            if not isinstance(row, dict):
                raise RecordingError(f"{path}:{n}: a row must be a JSON object")
            yield n, row


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _read(path: Path) -> Recording:
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording (outcomes.jsonl of a recorded data set)")
    outcomes: dict[tuple[str, str], RecordedOutcome] = {}
    try:
        for n, r in _rows(path):
            try:
                o = RecordedOutcome(
                    prompt_id=str(r["prompt_id"]),
                    task=_opt_str(r.get("task")),
                    model=str(r["model"]),
                    correct=_opt_float(r.get("correct")),
                    input_tokens=int(r.get("input_tokens") or 0),
                    output_tokens=None
                    if r.get("output_tokens") is None
                    else int(r["output_tokens"]),
                    cost_usd=_opt_float(r.get("cost_usd")),
                    response=_opt_str(r.get("response")),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise RecordingError(f"{path}:{n}: not an outcome row ({e!r})") from None
            outcomes[(o.prompt_id, o.model)] = o
    except orjson.JSONDecodeError as e:
        raise RecordingError(f"{path}: not JSON lines ({e})") from None
    prompts: dict[str, RecordedPrompt] = {}
    side = next(
        (
            p
            for p in (path.parent / "prompts.jsonl", path.parent / "prompts.jsonl.gz")
            if p.is_file()
        ),
        None,
    )
    if side is not None:
        for n, r in _rows(side):
            if "prompt_id" not in r:
                raise RecordingError(f"{side}:{n}: a prompt row needs 'prompt_id'")
            pid = str(r["prompt_id"])
            prompts[pid] = RecordedPrompt(
                prompt_id=pid,
                dataset=_opt_str(r.get("dataset")),
                task=_opt_str(r.get("task")),
                split=_opt_str(r.get("split_routerdc", r.get("split"))),
                text=_opt_str(r.get("prompt")),
                oracle_model=_opt_str(r.get("oracle_model")),
            )
    # Prompts with outcomes but no prompts.jsonl row are still reachable by prompt_id.
    for (pid, _), o in outcomes.items():
        if pid not in prompts:
            prompts[pid] = RecordedPrompt(pid, None, o.task, None, None, None)
    return Recording(path, prompts, outcomes)


_CACHE: dict[tuple[str, int, int], Recording] = {}
_LOCK = threading.Lock()


def load_recording(path: str | Path) -> Recording:
    """Read a recording once per process (several deployments and the harness share it).
    Blocking: call it from a thread inside an event loop."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        raise RecordingError(
            f"{p}: no such recording (outcomes.jsonl of a recorded data set)"
        ) from None
    key = (str(p), st.st_mtime_ns, st.st_size)
    with _LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _read(p)
            _CACHE[key] = found
        return found


def last_user_text(request: ChatRequest) -> str | None:
    for m in reversed(request.messages):
        if m.role == "user":
            return m.text()
    return None


class ReplayBackend:
    """A deployment that answers with `recorded_model`'s recorded responses."""

    def __init__(self, name: str, deployment: ReplayDeployment) -> None:
        self.name = name
        self.deployment = deployment
        self.accepts_prefill = False
        self.recording: Recording | None = None
        self._state: State = "starting"
        self._detail: str | None = "loading the recording"
        self._loaded = asyncio.Event()

    def unsupported(self, request: ChatRequest) -> str | None:
        if request.choices_wanted > 1:
            return "n > 1 is not supported by replay deployments (one recorded answer)"
        if request.tools:
            return "tools are not supported by replay deployments (answers are recorded text)"
        if request.logprobs:
            return "logprobs are not supported by replay deployments (none were recorded)"
        return None

    def status(self) -> DeploymentStatus:
        return DeploymentStatus(self._state, self._detail)

    async def start(self) -> None:
        try:
            recording = await asyncio.to_thread(load_recording, self.deployment.recording)
        except (RecordingError, OSError) as e:
            self._state, self._detail = "failed", str(e)
            self._loaded.set()
            return
        model = self.deployment.recorded_model
        if model not in recording.models:
            self._state = "failed"
            self._detail = (
                f"recorded_model '{model}' is not in {recording.path} "
                f"(recorded: {', '.join(recording.models)})"
            )
        else:
            self.recording, self._state, self._detail = recording, "ready", None
        self._loaded.set()

    async def aclose(self) -> None:
        return None

    async def _answer(self, request: ChatRequest) -> tuple[str, RecordedOutcome]:
        await self._loaded.wait()
        if self.recording is None:
            raise UpstreamError(
                f"deployment '{self.name}' cannot replay: {self._detail}", retryable=False
            )
        message = last_user_text(request)
        if message is None:
            raise UpstreamError(
                f"deployment '{self.name}': the request has no user message to look up in "
                "the recording",
                retryable=False,
                code="replay_not_recorded",
            )
        try:
            prompt_id = self.recording.resolve(message)
        except LookupError as e:
            raise UpstreamError(
                f"deployment '{self.name}': {e}", retryable=False, code="replay_not_recorded"
            ) from None
        model = self.deployment.recorded_model
        row = self.recording.outcome(prompt_id, model)
        if row is None:
            raise UpstreamError(
                f"deployment '{self.name}': model '{model}' has no recorded answer for prompt "
                f"'{prompt_id}'",
                retryable=False,
                code="replay_not_recorded",
            )
        if row.response is None:
            raise NotRecorded(
                f"deployment '{self.name}': the response of '{model}' to prompt '{prompt_id}' "
                f"(task {row.task}) is not in the recording, only its score: the answer text, "
                "and any validator's signal on it, cannot be replayed"
            )
        return row.response, row

    async def complete(self, request: ChatRequest) -> ChatResponse:
        text, row = await self._answer(request)
        return ChatResponse(
            choices=(Choice(index=0, content=text, finish_reason="stop"),),
            usage=row.usage,
            upstream_model=row.model,
            id=f"replay-{row.prompt_id}",
            created=int(time.time()),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        text, row = await self._answer(request)
        yield Chunk(role="assistant", content="")
        for i in range(0, len(text), STREAM_PIECE_CHARS):
            yield Chunk(content=text[i : i + STREAM_PIECE_CHARS])
        yield Chunk(finish_reason="stop")
        yield Chunk(usage=row.usage)
