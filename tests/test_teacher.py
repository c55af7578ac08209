"""The teacher client, cache and rules: a loopback server for the fault cases, LLaMA-Factory's API server for real."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmflow.data.labels import Label
from vlmflow.prompting.teacher import (
    TeacherCache,
    TeacherClient,
    TeacherError,
    TeacherFailuresError,
    TeacherSettings,
    ask_teacher,
    clean_answer,
    description_requests,
    image_data_url,
    reason_requests,
)

from conftest import KEY, KEY_ENV, run_snakemake, small_demo_config

LABELS = [Label("退款页面", "含有退款信息的页面"), Label("支付页面", "包含支付方式选择、支付成功的页面")]


# --- a loopback OpenAI-style server whose replies each test scripts ---------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: str | None = None  # None: a chat completion whose content names the request's prompt
    delay_s: float = 0.0
    headers: dict | None = None


class LoopbackTeacher:
    """Serves /v1/chat/completions on 127.0.0.1; ``reply(n, body)`` decides each answer (n counts from 1)."""

    def __init__(self, reply=lambda n, body: Reply()) -> None:
        self.reply = reply
        self.requests: list[dict] = []
        self.started: list[float] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher._lock:
                    teacher.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    teacher.started.append(time.monotonic())
                    number = len(teacher.requests)
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                try:
                    reply = teacher.reply(number, body)
                    time.sleep(reply.delay_s)
                    text = reply.body
                    if text is None:
                        prompt = body["messages"][0]["content"][1]["text"]
                        answer = {"choices": [{"message": {"role": "assistant", "content": f"答:{prompt}"}}]}
                        text = json.dumps(answer, ensure_ascii=False)
                    payload = text.encode()
                    self.send_response(reply.status)
                    for name, value in (reply.headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout)
                finally:
                    with teacher._lock:
                        teacher.in_flight -= 1

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback():
    servers = []

    def start(reply=lambda n, body: Reply()) -> LoopbackTeacher:
        servers.append(LoopbackTeacher(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def settings(url: str, **changes) -> TeacherSettings:
    fast = {"retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, "concurrency": 2}
    return TeacherSettings(base_url=url, model="teacher-test", **{**fast, **changes})


def images(folder: Path, count: int) -> pd.DataFrame:
    """``count`` distinct small PNGs as ingested records (id, image_path, image_sha256, label, split)."""
    rows = []
    for index in range(count):
        path = folder / f"image{index}.png"
        Image.new("RGB", (16, 16), (index * 40 % 256, 30, 90)).save(path)
        rows.append(
            {
                "id": f"r{index}",
                "split": "train",
                "image_path": str(path),
                "image_sha256": f"{index:064x}",
                "label": LABELS[index % 2].name,
            }
        )
    return pd.DataFrame(rows)


def image_bytes(body: dict) -> bytes:
    """The image a chat request carries, decoded from its data URL."""
    return base64.b64decode(body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1])


# --- the client ---------------------------------------------------------------------------------------------


def test_client_sends_the_image_prompt_model_and_key_and_returns_the_text(loopback, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    server = loopback()
    image = images(tmp_path, 1)["image_path"][0]
    with TeacherClient(settings(server.url, api_key_env=KEY_ENV, max_tokens=33)) as client:
        assert client.ask(image, "为什么是退款页面?") == "答:为什么是退款页面?"
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "teacher-test" and body["max_tokens"] == 33 and body["temperature"] == 0.0
    image_part, text_part = body["messages"][0]["content"]
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert image_bytes(body) == Path(image).read_bytes()
    assert text_part == {"type": "text", "text": "为什么是退款页面?"}
    assert KEY not in caplog.text


def test_a_key_variable_that_is_not_set_fails_naming_the_variable(loopback, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(TeacherError, match=f"environment variable {KEY_ENV} \\(teacher.api_key_env\\) is not set"):
        TeacherClient(settings(loopback().url, api_key_env=KEY_ENV))


def test_images_the_server_would_refuse_are_sent_as_png(tmp_path):
    path = tmp_path / "photo.webp"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="WEBP")
    url = image_data_url(path)
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).format == "PNG"


def test_429_and_500_are_retried_with_backoff_honouring_retry_after(loopback, tmp_path):
    faults = {1: Reply(429, "slow down", headers={"Retry-After": "0.03"}), 2: Reply(500, "boom")}
    server = loopback(lambda n, body: faults.get(n, Reply()))
    delays = []
    with TeacherClient(settings(server.url, retries=2, backoff_s=0.5, max_backoff_s=10), sleep=delays.append) as client:
        assert client.ask(images(tmp_path, 1)["image_path"][0], "p") == "答:p"
    assert len(server.requests) == 3
    assert delays[0] == pytest.approx(0.03)  # the server's Retry-After
    assert 0.5 <= delays[1] <= 1.0  # backoff_s * 2 ** 1, times a jitter in [0.5, 1]


def test_a_server_error_that_persists_gives_up_after_the_retries(loopback, tmp_path):
    server = loopback(lambda n, body: Reply(503, "unavailable"))
    with TeacherClient(settings(server.url, retries=2)) as client, pytest.raises(TeacherError) as failure:
        client.ask(images(tmp_path, 1)["image_path"][0], "p")
    assert "HTTP 503" in str(failure.value) and "gave up after 3 attempts" in str(failure.value)
    assert len(server.requests) == 3


def test_a_timeout_is_retried_then_reported(loopback, tmp_path):
    server = loopback(lambda n, body: Reply(delay_s=0.6))
    with (
        TeacherClient(settings(server.url, timeout_s=0.2, retries=1)) as client,
        pytest.raises(TeacherError) as failure,
    ):
        client.ask(images(tmp_path, 1)["image_path"][0], "p")
    assert "timed out after 0.2 s (gave up after 2 attempts)" in str(failure.value)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(200, "<html>not json</html>"), "malformed response body"),
        (Reply(200, '{"choices": []}'), "malformed response body"),
        (Reply(200, '{"choices": [{"message": {"content": "  "}}]}'), "empty answer"),
        (Reply(401, '{"detail": "Invalid API key."}'), "HTTP 401"),
    ],
)
def test_a_malformed_body_or_a_refusal_fails_at_once(loopback, tmp_path, reply, message):
    server = loopback(lambda n, body: reply)
    with TeacherClient(settings(server.url, retries=3)) as client, pytest.raises(TeacherError, match=message):
        client.ask(images(tmp_path, 1)["image_path"][0], "p")
    assert len(server.requests) == 1  # asking again cannot help


def test_concurrency_is_bounded(loopback, tmp_path):
    server = loopback(lambda n, body: Reply(delay_s=0.15))
    requests = description_requests(images(tmp_path, 8), "描述,{max_chars}字", 20)
    answers, _ = ask_teacher(requests, settings(server.url, concurrency=3), tmp_path / "cache", max_chars=99)
    assert len(answers) == 8 and len(server.requests) == 8
    assert server.max_in_flight == 3  # parallel, never above the bound


def test_request_starts_respect_the_rate_limit(loopback, tmp_path):
    server = loopback()
    requests = description_requests(images(tmp_path, 6), "描述", 20)
    started = time.monotonic()
    ask_teacher(requests, settings(server.url, concurrency=4, requests_per_minute=600), tmp_path / "cache", max_chars=9)
    gaps = np.diff(sorted(server.started))
    assert len(gaps) == 5 and gaps.min() >= 0.08  # 600 per minute: one start per 0.1 s
    assert time.monotonic() - started >= 0.5


# --- cache, failures and resumption -------------------------------------------------------------------------


def test_a_rerun_sends_nothing_already_answered_even_without_server_or_key(loopback, tmp_path, monkeypatch):
    server = loopback()
    requests = reason_requests(images(tmp_path, 4), LABELS, "{label}:{description},{max_chars}字", 50)
    first, failures = ask_teacher(requests, settings(server.url), tmp_path / "cache", max_chars=50)
    assert len(server.requests) == 4 and not first["from_cache"].any() and failures.empty
    assert first["text"].tolist() == [f"答:{prompt}" for prompt in requests["prompt"]]

    # The same questions with the server gone and the key variable unset: all from the cache.
    monkeypatch.delenv(KEY_ENV, raising=False)
    gone = settings("http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    again, _ = ask_teacher(requests, gone, tmp_path / "cache", max_chars=50)
    assert again["from_cache"].all() and again["text"].tolist() == first["text"].tolist()
    assert len(server.requests) == 4

    # Another prompt or another model is a new question.
    ask_teacher(
        requests.assign(prompt=requests["prompt"] + "!"), settings(server.url), tmp_path / "cache", max_chars=50
    )
    other = TeacherSettings(**{**settings(server.url).__dict__, "model": "another"})
    ask_teacher(requests, other, tmp_path / "cache", max_chars=50)
    assert len(server.requests) == 12


def test_failed_records_are_listed_skipped_or_fatal_and_retried_on_rerun(loopback, tmp_path, caplog):
    records = images(tmp_path, 4)
    requests = description_requests(records, "描述", 20)
    broken = {records["image_path"][1]: Reply(500, "boom"), records["image_path"][2]: Reply(200, "not json")}

    def faulty(n, body):
        path = next((path for path in broken if Path(path).read_bytes() == image_bytes(body)), None)
        return broken[path] if path else Reply()

    server = loopback(faulty)
    answers, failures = ask_teacher(requests, settings(server.url), tmp_path / "cache", max_chars=20, on_error="skip")
    assert sorted(answers["image_sha256"]) == [records["image_sha256"][0], records["image_sha256"][3]]
    assert failures["image_path"].tolist() == records["image_path"][1:3].tolist()
    assert "HTTP 500" in failures["error"][0] and "gave up after 3 attempts" in failures["error"][0]
    assert "malformed response body" in failures["error"][1]
    assert "2 of 4 teacher request(s) failed" in caplog.text and "use the template text" in caplog.text

    with pytest.raises(TeacherFailuresError, match=r"2 of 4 teacher request\(s\) failed: .*image1.png: HTTP 500"):
        ask_teacher(requests, settings(server.url), tmp_path / "cache", max_chars=20, on_error="fail")

    broken.clear()  # the server recovers: the rerun asks for the two missing answers only
    sent_before = len(server.requests)
    answers, failures = ask_teacher(requests, settings(server.url), tmp_path / "cache", max_chars=20)
    assert len(server.requests) - sent_before == 2 and failures.empty
    assert answers["from_cache"].tolist() == [True, False, False, True]


def test_a_teacher_that_keeps_failing_is_not_asked_for_the_rest(loopback, tmp_path, caplog):
    server = loopback(lambda n, body: Reply(502, "bad gateway"))
    requests = description_requests(images(tmp_path, 20), "描述", 20)
    answers, failures = ask_teacher(
        requests, settings(server.url, retries=1, concurrency=1), tmp_path / "cache", max_chars=20, on_error="skip"
    )
    assert answers.empty and len(failures) == 20
    assert len(server.requests) == 5 * 2  # five requests, each tried twice, then no more
    assert failures["error"].str.startswith("not sent: the teacher failed 5 requests in a row").sum() == 15
    assert "HTTP 502" in failures["error"][19] and "sending no more" in caplog.text


def test_parallel_jobs_asking_the_same_questions_take_turns_and_ask_once(loopback, tmp_path):
    server = loopback(lambda n, body: Reply(delay_s=0.05))
    requests = description_requests(images(tmp_path, 4), "描述", 20)
    results = []

    def job() -> None:
        results.append(ask_teacher(requests, settings(server.url), tmp_path / "cache", max_chars=20)[0])

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join()
    assert len(server.requests) == 4 and server.max_in_flight <= 2  # one job's pool at a time
    assert sorted(result["from_cache"].all() for result in results) == [False, True]


def test_an_interrupted_run_resumes_where_it_stopped(loopback, tmp_path):
    server = loopback(lambda n, body: Reply(delay_s=0.1))
    records = images(tmp_path, 12)
    records.to_parquet(tmp_path / "records.parquet")
    job = f"""
import pandas as pd
from vlmflow.prompting.teacher import TeacherSettings, ask_teacher, description_requests
requests = description_requests(pd.read_parquet({str(tmp_path / "records.parquet")!r}), "描述", 20)
ask_teacher(requests, TeacherSettings(base_url={server.url!r}, model="teacher-test", concurrency=1),
            {str(tmp_path / "cache")!r}, max_chars=20)
"""
    process = subprocess.Popen([sys.executable, "-c", job])
    deadline = time.monotonic() + 60
    while len(server.requests) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()  # no chance to clean up, as with a killed job
    process.wait()
    cached = len(list((tmp_path / "cache").glob("*/*.json")))
    assert 4 <= cached < 12

    sent_before = len(server.requests)
    answers, _ = ask_teacher(
        description_requests(records, "描述", 20), settings(server.url), tmp_path / "cache", max_chars=20
    )
    resent = {image_bytes(request["body"]) for request in server.requests[sent_before:]}
    assert len(server.requests) - sent_before == 12 - cached
    assert int(answers["from_cache"].sum()) == cached and len(answers) == 12
    cached_images = {
        Path(p).read_bytes() for p, hit in zip(records["image_path"], answers["from_cache"], strict=True) if hit
    }
    assert not resent & cached_images  # nothing answered before the kill was asked again


# --- requests, answers and diversity ---------------------------------------------------------------------------


def test_reason_requests_fill_the_gold_label_and_dedupe_images():
    records = pd.DataFrame(
        {
            "image_sha256": ["a", "a", "b", "c"],
            "image_path": ["/a", "/a2", "/b", "/c"],
            "label": ["退款页面", "退款页面", "支付页面", None],
        }
    )
    requests = reason_requests(records, LABELS, "「{label}」({description}),不超过{max_chars}字", 30)
    assert requests["prompt"].tolist() == [
        "「退款页面」(含有退款信息的页面),不超过30字",
        "「支付页面」(包含支付方式选择、支付成功的页面),不超过30字",
    ]
    assert description_requests(records, "描述,{max_chars}字", 9)["prompt"].tolist() == ["描述,9字"] * 3
    with pytest.raises(ValueError, match="unknown placeholder 'labl'"):
        reason_requests(records, LABELS, "{labl}", 30)


def test_answers_are_one_line_within_the_length_limit():
    assert clean_answer("  “图中有\n退款金额  和进度”  ", 50) == "图中有 退款金额 和进度"
    assert clean_answer("一二三四五六", 4) == "一二三四"


def test_cache_entries_are_keyed_by_image_prompt_model_and_generation(tmp_path):
    cache = TeacherCache(tmp_path, "m", {"max_tokens": 8, "temperature": 0})
    cache.put("a" * 64, "p", "答")
    assert cache.get("a" * 64, "p") == "答"
    assert cache.get("b" * 64, "p") is None and cache.get("a" * 64, "q") is None
    assert TeacherCache(tmp_path, "m", {"max_tokens": 9, "temperature": 0}).get("a" * 64, "p") is None
    assert TeacherCache(tmp_path, "m2", {"max_tokens": 8, "temperature": 0}).get("a" * 64, "p") is None
    cache.path("c" * 64, "p").parent.mkdir(parents=True, exist_ok=True)
    cache.path("c" * 64, "p").write_text("{half", encoding="utf-8")  # a damaged entry is asked again
    assert cache.get("c" * 64, "p") is None


# --- against LLaMA-Factory's OpenAI-compatible API server -----------------------------------------------------


@pytest.mark.slow
def test_the_client_talks_to_llamafactory_api_and_its_cache_spares_a_second_request(
    llamafactory_api, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)
    teacher = TeacherSettings(base_url=llamafactory_api.url, model="tiny", api_key_env=KEY_ENV, max_tokens=8)
    requests = reason_requests(
        images(tmp_path, 2), LABELS, "这张图片属于「{label}」,请用不超过{max_chars}字说明理由。", 50
    )
    before = llamafactory_api.completions()
    answers, failures = ask_teacher(requests, teacher, tmp_path / "cache", max_chars=50)
    assert failures.empty and len(answers) == 2 and (answers["text"].str.len() > 0).all()
    assert llamafactory_api.completions() - before == 2
    again, _ = ask_teacher(requests, teacher, tmp_path / "cache", max_chars=50)
    assert again["from_cache"].all() and again["text"].tolist() == answers["text"].tolist()
    assert llamafactory_api.completions() - before == 2


@pytest.mark.slow
def test_reason_and_describe_variants_take_the_teachers_text_through_the_workflow(
    llamafactory_api, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)
    config = small_demo_config(
        tmp_path,
        demo={"n_train": 12, "n_test": 4},
        variants=[
            {"name": "reason", "ocr": True, "reason": True},
            {"name": "describe_then_classify", "ocr": True, "describe": True, "describe_max_chars": 40},
        ],
        teacher={
            "base_url": llamafactory_api.url,
            "model": "tiny",
            "api_key_env": KEY_ENV,
            "max_tokens": 12,
            "concurrency": 2,
            "cache_dir": str(tmp_path / "teacher_cache"),
        },
    )
    targets = [
        "results/reason/prompts.parquet",
        "results/reason/reason_diversity.json",
        "results/describe_then_classify/prompts.parquet",
    ]
    before = llamafactory_api.completions()
    run_snakemake(tmp_path, config, "--cores", "2", *targets)
    sent = llamafactory_api.completions() - before

    reasons = pd.read_parquet(tmp_path / "results/reason/teacher/reasons.parquet")
    descriptions = pd.read_parquet(tmp_path / "results/describe_then_classify/teacher/descriptions.parquet")
    assert len(reasons) == 12 and len(descriptions) == 16 and sent == 28
    assert not reasons["from_cache"].any() and (reasons["text"].str.len().between(1, 50)).all()
    assert (descriptions["text"].str.len().between(1, 40)).all()

    # The reason variant trains on the teacher's reasons, the describe variant reads its descriptions.
    prompts = pd.read_parquet(tmp_path / "results/reason/prompts.parquet")
    train = prompts[prompts["split"] == "train"]
    by_image = dict(zip(reasons["image_sha256"], reasons["text"], strict=True))
    assert [json.loads(t)["理由"] for t in train["target"]] == [by_image[sha] for sha in train["image_sha256"]]
    described = pd.read_parquet(tmp_path / "results/describe_then_classify/prompts.parquet")
    by_image = dict(zip(descriptions["image_sha256"], descriptions["text"], strict=True))
    assert len(described) == 16
    for prompt, sha in zip(described["prompt"], described["image_sha256"], strict=True):
        assert f"图片描述:{' '.join(by_image[sha].split())}\n以下是可以参考的分类标签" in prompt
    report = json.loads((tmp_path / "results/reason/reason_diversity.json").read_text(encoding="utf-8"))
    assert report["source"] == "teacher" and report["reasons"] == 12 and 0 <= report["mean_similarity"] <= 1
    assert "teacher tiny: 12 requests, 0 answered from the cache, 12 to send" in (
        tmp_path / "logs/teacher/reason/reasons.log"
    ).read_text(encoding="utf-8")

    # A forced rerun of both teacher rules answers everything from the cache: the server sees nothing.
    # (--forcerun takes every argument after it, so the targets come first)
    run_snakemake(tmp_path, config, "--cores", "2", *targets, "--forcerun", "teacher_reasons", "teacher_descriptions")
    assert llamafactory_api.completions() - before == sent
    assert pd.read_parquet(tmp_path / "results/reason/teacher/reasons.parquet")["from_cache"].all()
    assert pd.read_parquet(tmp_path / "results/describe_then_classify/teacher/descriptions.parquet")["from_cache"].all()
    assert pd.read_parquet(tmp_path / "results/reason/prompts.parquet").equals(prompts)


@pytest.mark.slow
def test_a_cot_variant_asks_the_teacher_for_a_step_by_step_analysis_and_trains_on_it(
    llamafactory_api, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)
    cache = tmp_path / "teacher_cache"
    config = small_demo_config(
        tmp_path,
        demo={"n_train": 8, "n_test": 2},
        variants=[{"name": "cot", "ocr": True, "reason": True, "cot": True, "reason_max_chars": 80}],
        teacher={"base_url": llamafactory_api.url, "model": "tiny", "api_key_env": KEY_ENV, "cache_dir": str(cache)},
    )
    run_snakemake(tmp_path, config, "--cores", "2", "results/cot/prompts.parquet")

    asked = [json.loads(path.read_text(encoding="utf-8")) for path in cache.rglob("*.json")]
    reasons = pd.read_parquet(tmp_path / "results/cot/teacher/reasons.parquet")
    assert len(asked) == len(reasons) == 8
    for entry in asked:  # the schema's cot_prompt, filled in for the image's gold label
        assert "请一步一步分析" in entry["prompt"] and "一共不超过80字" in entry["prompt"]
    prompts = pd.read_parquet(tmp_path / "results/cot/prompts.parquet")
    train = prompts[prompts["split"] == "train"]
    assert train["prompt"].str.contains("理由是一步一步的分析").all()
    by_image = dict(zip(reasons["image_sha256"], reasons["text"], strict=True))
    assert [json.loads(t)["理由"] for t in train["target"]] == [by_image[sha] for sha in train["image_sha256"]]
