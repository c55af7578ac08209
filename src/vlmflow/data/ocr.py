"""OCR each distinct image once: engines behind one ``read`` interface, reading order, a per-image cache.

The OCR text goes into the classification prompt. Engines: ``rapidocr`` (default; RapidOCR 3.x, PP-OCRv6 ONNX models
ship inside the wheel, fully offline) and ``paddleocr`` (PaddleOCR 3.x from local model dirs only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import pandas as pd
import yaml

from vlmflow.runtime.json_cache import JsonCache

log = logging.getLogger(__name__)

# error: why the engine could not read the image ("" when it could), for the skip report (vlmflow.data.accounting).
OUTPUT_COLUMNS = ["image_sha256", "text", "lines", "n_lines", "engine", "from_cache", "error"]
PROGRESS_EVERY = 25
PADDLE_INSTALL_HINT = "pip install paddleocr paddlepaddle (or paddlepaddle-gpu on a CUDA machine)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class OcrEngineError(RuntimeError):
    """An OCR engine cannot be built: package missing or models not configured."""


@dataclass(frozen=True)
class OcrLine:
    text: str
    box: list[list[float]]  # 4 corner points [x, y], clockwise from top-left
    score: float


@dataclass(frozen=True)
class OcrResult:
    lines: list[OcrLine]
    text: str  # the lines joined by reading_order


class OcrEngine(Protocol):
    name: str

    def read(self, image_path: str | Path) -> list[OcrLine]: ...


def _line(text: Any, box: Any, score: Any) -> OcrLine:
    return OcrLine(str(text), [[round(float(x), 1), round(float(y), 1)] for x, y in box], float(score))


def _rapidocr_key(name: str) -> str:
    """A RapidOCR 1.x keyword (det_limit_type, text_score) as 3.x's dotted config key (Det.limit_type,
    Global.text_score), so configs written for either keep working; a dotted key passes as it is."""
    if "." in name:
        return name
    for prefix, section in (("det_", "Det"), ("cls_", "Cls"), ("rec_", "Rec")):
        if name.startswith(prefix):
            return f"{section}.{name.removeprefix(prefix)}"
    return f"Global.{name}"


# Engines are built once per process (loading models costs time) and shared by every wrapper instance.
@cache
def _rapidocr(threads: int, options: tuple[tuple[str, Any], ...]) -> Any:
    import cv2
    from rapidocr import EngineType, ModelType, OCRVersion, RapidOCR

    cv2.setNumThreads(threads)  # OpenCV does RapidOCR's resizing; keep it to the job's cores too
    choices = {"engine_type": EngineType, "model_type": ModelType, "ocr_version": OCRVersion}  # 3.x wants Enums
    params: dict[str, Any] = {
        "Global.log_level": "error",  # 3.x logs every model path and warns on every image without text
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    for name, value in options:
        key = _rapidocr_key(name)
        kind = choices.get(key.rsplit(".", 1)[-1])
        params[key] = kind(value) if kind and not isinstance(value, kind) else value
    ocr = RapidOCR(params=params)
    # 3.x loads each model on its first image; load them now, so that a model missing from the wheel (3.x
    # would download it, and cannot offline) fails building the engine, not every image one by one.
    ocr._load_det_model(), ocr._load_cls_model(), ocr._load_rec_model()
    return ocr


class RapidOcrEngine:
    """RapidOCR 3.x on onnxruntime (PP-OCRv6 small, shipped in the wheel); ``threads`` sets its intra-op
    threads (the workflow runs one job per core). Options in 1.x's names (det_limit_type) or 3.x's dotted
    keys (Det.limit_type). Measured against 1.4.4 (PP-OCRv4) in docs/benchmarks.md: 35 to 40% fewer errors."""

    name = "rapidocr"

    def __init__(self, threads: int = 1, **options: Any) -> None:
        self._ocr = _rapidocr(threads, tuple(sorted(options.items())))

    def read(self, image_path: str | Path) -> list[OcrLine]:
        result = self._ocr(str(image_path))
        if not result.txts:  # None when nothing was found
            return []
        found = zip(result.boxes, result.txts, result.scores, strict=True)
        return [_line(text, box, score) for box, text, score in found]


def paddle_model_name(model_dir: str | Path | None, option: str) -> str:
    """Check one PaddleOCR model dir and return the model name its ``inference.yml`` declares.

    Done before PaddleOCR is constructed: given no dir it downloads models (hangs offline), and PaddleX
    asserts that the model name it is given matches the dir's, so the name is read from the dir itself.
    """
    if not model_dir:
        raise OcrEngineError(
            f"engine 'paddleocr' needs {option}: a local PaddleOCR 3.x inference model dir "
            "(without one PaddleOCR downloads its models, which fails offline)"
        )
    if not Path(model_dir).is_dir():
        raise OcrEngineError(f"{option}={model_dir}: no such directory")
    config_path = Path(model_dir) / "inference.yml"
    if not config_path.is_file():
        raise OcrEngineError(
            f"{option}={model_dir}: no inference.yml there; a PaddleOCR 3.x model dir holds "
            "inference.yml, inference.json and inference.pdiparams"
        )
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    name = (config.get("Global") or {}).get("model_name")
    if not name:
        raise OcrEngineError(f"{config_path}: no Global.model_name")
    return str(name)


@cache
def _paddleocr(arguments: tuple[tuple[str, Any], ...]) -> Any:
    from paddleocr import PaddleOCR

    return PaddleOCR(**dict(arguments))


class PaddleOcrEngine:
    """PaddleOCR 3.x from local model dirs only; the text line orientation model is optional."""

    name = "paddleocr"

    def __init__(
        self,
        text_detection_model_dir: str | Path | None = None,
        text_recognition_model_dir: str | Path | None = None,
        textline_orientation_model_dir: str | Path | None = None,
        device: str = "cpu",
        threads: int = 1,
        **options: Any,
    ) -> None:
        # Dirs first, so that a misconfigured workflow says so even on a machine without paddle.
        dirs = {"text_detection": text_detection_model_dir, "text_recognition": text_recognition_model_dir}
        if textline_orientation_model_dir:
            dirs["textline_orientation"] = textline_orientation_model_dir
        arguments = {
            # Each of these stages is on by default and would download its own model.
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
            "use_textline_orientation": bool(textline_orientation_model_dir),
            "device": device,
            "cpu_threads": threads,
            **options,
        }
        for stage, model_dir in dirs.items():
            arguments[f"{stage}_model_name"] = paddle_model_name(model_dir, f"{stage}_model_dir")
            arguments[f"{stage}_model_dir"] = str(model_dir)
        try:
            import paddleocr  # noqa: F401
        except ImportError as error:
            message = f"engine 'paddleocr' needs the paddleocr package: {PADDLE_INSTALL_HINT}"
            raise OcrEngineError(message) from error
        self._ocr = _paddleocr(tuple(sorted(arguments.items())))

    def read(self, image_path: str | Path) -> list[OcrLine]:
        return [
            _line(text, box, score)
            for page in self._ocr.predict(str(image_path))
            for text, score, box in zip(page["rec_texts"], page["rec_scores"], page["rec_polys"], strict=True)
        ]


ENGINES: dict[str, type] = {"rapidocr": RapidOcrEngine, "paddleocr": PaddleOcrEngine}


def make_ocr_engine(name: str = "rapidocr", **options: Any) -> OcrEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name](**options)


def reading_order(lines: list[OcrLine]) -> str:
    """Rows top to bottom (y-centres within half the median line height of the row's), left to right."""
    items = []  # (y-centre, height, left x, text) per line with text
    for line in lines:
        xs, ys = [x for x, _ in line.box], [y for _, y in line.box]
        if line.text.strip():
            items.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(xs), line.text.strip()))
    if not items:
        return ""
    tolerance = median(height for _, height, _, _ in items) / 2
    rows: list[list[tuple[float, float, float, str]]] = []
    for item in sorted(items):
        # Against the row's mean centre, so a long row of slightly slanted boxes does not drift downwards.
        if rows and abs(item[0] - sum(member[0] for member in rows[-1]) / len(rows[-1])) <= tolerance:
            rows[-1].append(item)
        else:
            rows.append([item])
    return "\n".join(" ".join(item[3] for item in sorted(row, key=lambda item: item[2])) for row in rows)


# Text read by RapidOCR 1.x (PP-OCRv4) lies under rapidocr/: 3.x's models read the same images otherwise.
CACHE_NAMESPACES = {"rapidocr": "rapidocr3"}


class OcrCache:
    """One JSON file per image, ``<cache_dir>/<engine>[-<options hash>]/<sha[:2]>/<sha>.json``
    (vlmflow.runtime.json_cache).

    Shared by runs and datasets. Engine options that change what is read (detection size, model
    folders) get their own namespace, so a changed setting never serves text read the old way.
    """

    def __init__(self, cache_dir: str | Path, engine_name: str, options: dict | None = None) -> None:
        namespace = CACHE_NAMESPACES.get(engine_name, engine_name)
        if options:
            digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
            namespace = f"{namespace}-{digest[:12]}"
        self.entries = JsonCache(Path(cache_dir) / namespace, "OCR")
        self.folder = self.entries.folder

    def path(self, sha: str) -> Path:
        if not _SHA256.fullmatch(sha):
            raise ValueError(f"not a lower-case sha256 hex digest: {sha!r}")
        return self.entries.path(sha)

    def get(self, sha: str) -> OcrResult | None:
        self.path(sha)  # the digest checked
        return self.entries.read(sha, lambda data: OcrResult([OcrLine(**line) for line in data["lines"]], data["text"]))

    def put(self, sha: str, result: OcrResult) -> None:
        self.path(sha)
        self.entries.write(sha, {"lines": [asdict(line) for line in result.lines], "text": result.text})


# OCR jobs when the run gives no core count (a cluster executor): its nodes take them as they come.
OCR_JOBS_WITHOUT_CORES = 4


def ocr_jobs(shards: int | None, threads: int | None, cores: int | None, existing_shards: int = 0) -> tuple[int, int]:
    """How many OCR jobs the run makes and how many threads each: config ocr.shards and ocr.threads where set.
    Otherwise one job per core the run is given (--cores), each with the cores left over; an engine with one thread
    per job keeps more cores busy than one job with many (RapidOCR's small models barely use a second thread). A
    run that already holds shard files keeps their count: other --cores then redo no OCR and nothing after it."""
    cores = cores or OCR_JOBS_WITHOUT_CORES
    if shards is None:
        shards = existing_shards or cores
    if threads is None:
        threads = max(1, cores // shards)
    return shards, threads


def select_shard(table: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """The distinct images with ``int(sha256, 16) % n_shards == shard``: stable across runs and datasets."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need n_shards >= 1 and 0 <= shard < n_shards")
    images = table.drop_duplicates("image_sha256")
    keep = images["image_sha256"].map(lambda sha: int(sha, 16) % n_shards == shard)
    return images[keep].reset_index(drop=True)


def ocr_images(table: pd.DataFrame, engine: OcrEngine, cache: OcrCache) -> pd.DataFrame:
    """OCR each distinct ``image_sha256`` of ``table`` once (cache first); one output row per image.

    An image the engine fails on gets empty text, its error and a warning, and is not cached, so a rerun retries it.
    """
    missing = {"image_sha256", "image_path"} - set(table.columns)
    if missing:
        raise ValueError(f"OCR input lacks columns: {sorted(missing)}")
    images = table.drop_duplicates("image_sha256")
    rows, hits, failures, start = [], 0, 0, time.monotonic()
    for done, (sha, image_path) in enumerate(zip(images["image_sha256"], images["image_path"], strict=True), start=1):
        result = cache.get(sha)
        from_cache, failure = result is not None, ""
        if result is None:
            try:
                lines = engine.read(image_path)
            except Exception as error:  # one unreadable image must not sink the whole shard
                log.warning("OCR failed on image %s (sha256 %s): %s", image_path, sha, error)
                failures += 1
                failure = f"{type(error).__name__}: {error}"[:300]  # OpenCV's messages run to a screenful
                result = OcrResult([], "")
            else:
                result = OcrResult(lines, reading_order(lines))
                cache.put(sha, result)
        hits += from_cache
        rows.append(
            {
                "image_sha256": sha,
                "text": result.text,
                "lines": json.dumps([asdict(line) for line in result.lines], ensure_ascii=False),
                "n_lines": len(result.lines),
                "engine": engine.name,
                "from_cache": from_cache,
                "error": failure,
            }
        )
        if done % PROGRESS_EVERY == 0 or done == len(images):
            elapsed = time.monotonic() - start
            log.info(
                "OCR %d/%d images, %.2f images/s, %d cache hits, %d failed",
                done,
                len(images),
                done / max(elapsed, 1e-9),
                hits,
                failures,
            )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def text_by_record(records: pd.DataFrame, ocr_table: pd.DataFrame | None) -> dict[str, str]:
    """Each record id's OCR text (empty when there is no OCR table or no text for its image)."""
    if ocr_table is None:
        return dict.fromkeys(records["id"], "")
    text = dict(zip(ocr_table["image_sha256"], ocr_table["text"], strict=True))
    return {record_id: text.get(sha, "") for record_id, sha in zip(records["id"], records["image_sha256"], strict=True)}
