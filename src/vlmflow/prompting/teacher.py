"""A teacher: any OpenAI-compatible chat endpoint that accepts images, asked one question per image.

Two of the recipe's gains need a stronger model than the one being trained: a reason for each training
image given its gold label, and a description of each image for the describe-then-classify prompt. Any
server speaking the OpenAI chat-completions protocol with ``image_url`` parts will do (vLLM, LLaMA-Factory's
``llamafactory-cli api``, a cloud service's compatible mode).

Every answer is cached per (image sha256, prompt, model, generation options) the moment it arrives, so a
rerun, or a run resumed after an interruption, sends only what was never answered. Requests run in a
bounded thread pool behind a shared rate limiter, with a timeout, and are retried with exponential backoff
on 429, 5xx, timeouts and dropped connections; after a run of requests failing for good the rest are not
sent. Records that still fail are returned with their error.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
from PIL import Image

from vlmflow.data.labels import Label
from vlmflow.runtime.json_cache import JsonCache

log = logging.getLogger(__name__)
# httpx logs every request at INFO; hundreds of those lines would drown the progress lines.
logging.getLogger("httpx").setLevel(logging.WARNING)

REQUEST_COLUMNS = ["image_sha256", "image_path", "label", "prompt"]
FAILURE_COLUMNS = ["image_sha256", "image_path", "label", "error"]
PROGRESS_EVERY = 25
# After this many requests in a row fail for good (each after its retries), the teacher is taken to be down
# or misconfigured and the rest are not sent: hours of retries against a wrong URL help nobody.
FAILURES_IN_A_ROW_TO_STOP = 5
# The data-URL types LLaMA-Factory's server accepts; other formats are sent re-encoded as PNG.
_DATA_URL_TYPES = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}


class TeacherError(RuntimeError):
    """One request failed for good: after its retries, or at once when retrying cannot help."""


class TeacherFailuresError(RuntimeError):
    """Some records have no answer and ``on_error`` is ``fail``."""


@dataclass(frozen=True)
class TeacherSettings:
    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = 4
    requests_per_minute: float | None = None
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    max_tokens: int = 256
    temperature: float = 0.0

    @classmethod
    def from_config(cls, section: Mapping) -> TeacherSettings:
        """The ``teacher:`` config section (unknown keys, such as the prompts, are ignored)."""
        if not section.get("base_url") or not section.get("model"):
            raise ValueError("a teacher needs teacher.base_url and teacher.model")
        return cls(**{name: section[name] for name in cls.__dataclass_fields__ if section.get(name) is not None})

    def generation(self) -> dict:
        """Request options that change the answer, hence part of the cache key."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}


def api_key(env_name: str | None) -> str | None:
    """The key from the named environment variable; config and logs only ever hold the variable's name."""
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise TeacherError(f"environment variable {env_name} (teacher.api_key_env) is not set or empty")
    return key


class RateLimiter:
    """Spaces request starts at least 60 / requests_per_minute seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.interval
        time.sleep(start - now)


def image_data_url(image_path: str | Path) -> str:
    """The image as a base64 data URL, so the server needs no access to our files."""
    path = Path(image_path)
    with Image.open(path) as image:
        kind = _DATA_URL_TYPES.get(image.format or "")
        data = path.read_bytes() if kind else _png_bytes(image)  # e.g. WebP: re-encoded rather than refused
    return f"data:image/{kind or 'png'};base64,{base64.b64encode(data).decode('ascii')}"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff


def parse_answer(response: httpx.Response) -> str:
    """The text of the first choice; a body that is not a chat completion is an error, not an answer."""
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise TeacherError(f"malformed response body ({type(error).__name__}): {response.text[:200]!r}") from error
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise TeacherError(f"empty answer: {response.text[:200]!r}")
    return content


class TeacherClient:
    """Sends one image and one prompt, returns the answer's text; thread-safe, so one client serves a pool."""

    def __init__(self, settings: TeacherSettings, *, sleep=time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self._limiter = RateLimiter(settings.requests_per_minute)
        key = api_key(settings.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=settings.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=settings.timeout_s,
            limits=httpx.Limits(max_connections=settings.concurrency),
        )

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self._http.close()

    def ask(self, image_path: str | Path, prompt: str) -> str:
        body = {
            "model": self.settings.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(image_path)}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            **self.settings.generation(),
        }
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            self._limiter.wait()
            retry_after = None
            try:
                response = self._http.post("chat/completions", json=body)
            except httpx.TimeoutException:
                problem = f"timed out after {self.settings.timeout_s} s"
            except httpx.RequestError as error:  # refused or dropped connection, broken stream
                problem = f"request failed: {type(error).__name__}: {error}"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}: {response.text[:200]!r}"
                    retry_after = _retry_after_s(response)
                elif response.status_code >= 400:  # a bad request or a refused key: asking again cannot help
                    raise TeacherError(f"HTTP {response.status_code}: {response.text[:200]!r}")
                else:
                    return parse_answer(response)
            if attempt == attempts:
                raise TeacherError(f"{problem} (gave up after {attempts} attempts)")
            delay = self.backoff_s(attempt, retry_after)
            log.info("teacher request failed (%s); retry %d/%d in %.1f s", problem, attempt, attempts - 1, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def backoff_s(self, attempt: int, retry_after: float | None = None) -> float:
        """The server's Retry-After when it gives one, else exponential with jitter; capped either way."""
        if retry_after is not None:
            return min(retry_after, self.settings.max_backoff_s)
        delay = self.settings.backoff_s * 2 ** (attempt - 1)
        return min(delay * random.uniform(0.5, 1.0), self.settings.max_backoff_s)  # jitter spreads a burst


class TeacherCache:
    """One JSON file per answer, ``<cache_dir>/<key[:2]>/<key>.json``, key = sha256 of what decides the answer
    (vlmflow.runtime.json_cache).

    The key covers the image's sha256, the full prompt, the model and the generation options, so a changed
    prompt or model is asked afresh and an unchanged one never is, whatever run or variant asks.
    """

    def __init__(self, cache_dir: str | Path, model: str, generation: Mapping | None = None) -> None:
        self.entries = JsonCache(cache_dir, "teacher")
        self.folder = self.entries.folder
        self.model = model
        self.generation = dict(generation or {})

    def key(self, image_sha256: str, prompt: str) -> str:
        what = {"image_sha256": image_sha256, "prompt": prompt, "model": self.model, "generation": self.generation}
        return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def path(self, image_sha256: str, prompt: str) -> Path:
        return self.entries.path(self.key(image_sha256, prompt))

    def get(self, image_sha256: str, prompt: str) -> str | None:
        return self.entries.read(self.key(image_sha256, prompt), lambda data: data["text"])

    def put(self, image_sha256: str, prompt: str, text: str) -> None:
        entry = {"image_sha256": image_sha256, "prompt": prompt, "model": self.model, **self.generation, "text": text}
        self.entries.write(self.key(image_sha256, prompt), entry)


@contextmanager
def one_teacher_job_at_a_time(cache_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder while asking, so that concurrency and
    requests_per_minute bound the whole workflow, not each of its parallel teacher jobs."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another teacher job is asking; waiting for it to finish")
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # the kernel drops the lock when the file closes, even if the job is killed


def format_prompt(template: str, **fields) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as error:
        raise ValueError(f"teacher prompt {template[:60]!r} uses an unknown placeholder {error}") from error


def reason_requests(records: pd.DataFrame, labels: list[Label], template: str, max_chars: int) -> pd.DataFrame:
    """One request per distinct (image, gold label) of the labelled records: why the image has its label.

    ``template`` may use {label}, {description} and {max_chars}.
    """
    by_name = {label.name: label for label in labels}
    labelled = records[records["label"].notna()].drop_duplicates(["image_sha256", "label"])
    prompts = [
        format_prompt(
            template,
            label=name,
            description=by_name[name].description or name,
            max_chars=max_chars,
        )
        for name in labelled["label"]
    ]
    return labelled.assign(prompt=prompts)[REQUEST_COLUMNS].reset_index(drop=True)


def description_requests(records: pd.DataFrame, template: str, max_chars: int) -> pd.DataFrame:
    """One request per distinct image: describe it (no label given). ``template`` may use {max_chars}."""
    images = records.drop_duplicates("image_sha256")
    return images.assign(label=None, prompt=format_prompt(template, max_chars=max_chars))[REQUEST_COLUMNS].reset_index(
        drop=True
    )


def clean_answer(text: str, max_chars: int) -> str:
    """One line, at most ``max_chars`` characters: the recipe keeps reasons short (50 by default)."""
    return " ".join(text.split()).strip("\"'“”「」")[:max_chars]


def ask_teacher(
    requests: pd.DataFrame,
    settings: TeacherSettings,
    cache_dir: str | Path,
    *,
    max_chars: int,
    on_error: str = "fail",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Answers for ``requests`` (``reason_requests`` / ``description_requests``): the cache first, then the teacher.

    Returns the answered requests with ``text`` (cleaned, at most ``max_chars``) and ``from_cache``, and the
    failed ones with their ``error``. With ``on_error="fail"`` any failure raises ``TeacherFailuresError``
    listing them (every answer received is cached first, so the rerun asks only for those).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, not {on_error!r}")
    cache = TeacherCache(cache_dir, settings.model, settings.generation())
    answers = _cached_answers(requests, cache)
    log.info(
        "teacher %s: %d requests, %d answered from the cache, %d to send",
        settings.model,
        len(requests),
        len(answers),
        len(requests) - len(answers),
    )
    errors: dict[int, str] = {}
    if len(answers) < len(requests):
        with one_teacher_job_at_a_time(cache_dir):
            # Another job asking the same questions (a variant with the same prompts) may have just answered.
            answers |= _cached_answers(requests.drop(index=list(answers)), cache)
            missing = requests.drop(index=list(answers))
            if len(missing):
                with TeacherClient(settings) as teacher:
                    errors = _send(missing, teacher, cache, settings.concurrency, answers)
    answered = requests.loc[sorted(answers)].assign(
        text=[clean_answer(answers[index][0], max_chars) for index in sorted(answers)],
        from_cache=[answers[index][1] for index in sorted(answers)],
    )
    failed = requests.loc[sorted(errors)].assign(error=[errors[index] for index in sorted(errors)])[FAILURE_COLUMNS]
    if len(failed):
        listing = "; ".join(f"{row.image_path}: {row.error}" for row in failed.head(10).itertuples())
        message = f"{len(failed)} of {len(requests)} teacher request(s) failed: {listing}"
        if on_error == "fail":
            for row in failed.itertuples():
                log.error("teacher request failed for %s (sha256 %s): %s", row.image_path, row.image_sha256, row.error)
            raise TeacherFailuresError(message + "; rerun to retry them (answers so far are cached)")
        log.warning("%s; skipped (teacher.on_error: skip), these records use the template text", message)
    return answered.reset_index(drop=True), failed.reset_index(drop=True)


def _cached_answers(requests: pd.DataFrame, cache: TeacherCache) -> dict[int, tuple[str, bool]]:
    """{request index: (text, True)} for the requests the cache answers."""
    answers = {}
    for index, request in requests.iterrows():
        cached = cache.get(request["image_sha256"], request["prompt"])
        if cached is not None:
            answers[index] = (cached, True)
    return answers


def _send(
    missing: pd.DataFrame,
    teacher: TeacherClient,
    cache: TeacherCache,
    concurrency: int,
    answers: dict[int, tuple[str, bool]],
) -> dict[int, str]:
    """Ask for every missing answer with at most ``concurrency`` requests in flight; cache each on arrival."""

    stopped = threading.Event()
    why_stopped: list[str] = []
    in_a_row = 0
    lock = threading.Lock()

    def ask(request: pd.Series) -> str:
        nonlocal in_a_row
        if stopped.is_set():
            raise TeacherError(f"not sent: {why_stopped[0]}")
        try:
            text = teacher.ask(request["image_path"], request["prompt"])
        except TeacherError as error:
            with lock:  # counted here, in the worker, so that its next request already sees the stop
                in_a_row += 1
                if in_a_row == FAILURES_IN_A_ROW_TO_STOP:
                    why_stopped.append(f"the teacher failed {in_a_row} requests in a row, the last with: {error}")
                    stopped.set()
                    log.error("%s; sending no more", why_stopped[0])
            raise
        with lock:
            in_a_row = 0
        cache.put(request["image_sha256"], request["prompt"], text)
        return text

    errors: dict[int, str] = {}
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
    try:
        futures = {pool.submit(ask, request): index for index, request in missing.iterrows()}
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            try:
                answers[index] = (future.result(), False)
            except (TeacherError, OSError) as error:  # OSError: an unreadable image
                errors[index] = str(error)
            if done % PROGRESS_EVERY == 0 or done == len(futures):
                log.info(
                    "teacher: %d/%d sent, %.2f answers/s, %d failed",
                    done,
                    len(futures),
                    done / max(time.monotonic() - started, 1e-9),
                    len(errors),
                )
    finally:
        # On an interruption, drop what has not started; answers already cached survive for the rerun.
        pool.shutdown(wait=True, cancel_futures=True)
    return errors
