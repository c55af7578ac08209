"""Read labelled or unlabelled image records, validate each one, and normalise them to one table.

Formats: MIRE JSON (one JSON list; only the image-scene records are kept), JSON lines and CSV,
both with ``id``, ``image`` and ``label`` fields. Every record either reaches the output table or
the rejected table with its reason, so records in = records out + rejected, always.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from vlmflow.data.duplicates import exact_duplicate_counts
from vlmflow.runtime.outputs import write_bytes_atomically

log = logging.getLogger(__name__)

RECORD_COLUMNS = ["id", "image_path", "label", "image_sha256", "width", "height"]
REJECTED_COLUMNS = ["record", "id", "reason"]

# Qwen2-VL's image processor refuses images whose long side is more than 200 times the short one (at
# training or scoring time, hours in), and RapidOCR's default upscaling of such a sliver runs for minutes.
MAX_ASPECT_RATIO = 200

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a camera held the sensor; 1 is upright

REENCODE = "re-encode the file as UTF-8"

# The dialogue subtask shares the MIRE files; its instructions open with this role.
DIALOGUE_SUBTASK_MARKER = "你是一个电商客服专家"


def missing_data(data: dict, made_by_the_workflow: set[str], workdir: Path = Path(".")) -> str | None:
    """What stops a run before its first job, or None: data.train or data.test unset, or a data file (truth
    included) that is neither there nor written by one of the workflow's rules (the demo's files are). Checked when
    the workflow is parsed, so that a fresh clone's `snakemake -n` says what to set rather than which rule lacks
    an input."""
    problems = []
    for key in ("train", "test", "truth"):
        path = data.get(key)
        if path is None:
            if key != "truth":  # no truth is a run without test metrics
                problems.append(f"data.{key} is not set")
        elif path not in made_by_the_workflow and not (workdir / path).is_file():
            problems.append(f"data.{key} names {path}, which does not exist in {workdir.resolve()}")
    if not problems:
        return None
    return (
        f"{'; '.join(problems)}. Set data.train and data.test in config/config.yaml to your records (README, "
        '"Your own data and model"), or run `make demo` for the embedded demo '
        "(config/demo.yaml laid over config/config.yaml)."
    )


class DataFileError(ValueError):
    """A whole data file cannot be read: missing, empty, not UTF-8, or not valid JSON/CSV."""


class BadRecordsError(ValueError):
    """One or more records failed validation and ``on_error`` is ``fail``."""


@dataclass(frozen=True)
class RawRecord:
    """One record as read from a file, before validation. ``position`` names it in messages."""

    position: str
    id: str | None
    image: str | None
    label: str | None


@dataclass
class IngestResult:
    records: pd.DataFrame
    rejected: pd.DataFrame
    records_in: int
    reasons: dict[str, int] = field(default_factory=dict)
    # Kept records that go on with a warning (an unreadable EXIF block): id, position, image, reason.
    flagged: list[dict] = field(default_factory=list)
    oriented: int = 0  # records whose image was rotated upright into a normalised copy

    def counts(self) -> dict:
        return {
            "records_in": self.records_in,
            "records_out": len(self.records),
            "rejected": len(self.rejected),
            "rejected_by_reason": self.reasons,
            "oriented": self.oriented,
            "exact_duplicates": exact_duplicate_counts(self.records),
            "flagged": self.flagged,
        }


@dataclass(frozen=True)
class Rejection:
    record: RawRecord
    kind: str  # a short key for counting, e.g. "image_not_found"
    message: str


# ---------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataFileError(f"{path}: data file does not exist")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFileError(f"{path}: data file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        where = _where_undecodable(raw, error)
        raise DataFileError(f"{path}: not UTF-8 text ({where}); {REENCODE}") from error


def _where_undecodable(raw: bytes, error: UnicodeDecodeError) -> str:
    """Byte offset, line, column and the bytes themselves of the first byte that is not UTF-8."""
    line = raw.count(b"\n", 0, error.start) + 1
    column = error.start - raw.rfind(b"\n", 0, error.start)
    return f"byte {error.start}, line {line} column {column}: {raw[error.start : error.start + 4]!r}"


def _undecodable_text(values: dict) -> str | None:
    """Which field holds text no UTF-8 file can: a lone surrogate, e.g. a JSON escape \\udc80. None if all can.

    Such text parses, but fails every later write (parquet, CSV) with a message naming no record.
    """
    for name, value in values.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    bad = ascii(text[error.start : error.end])
                    return f"field {name!r} holds {bad}, a lone surrogate that is not UTF-8 text; fix or drop it"
    return None


def _shown(text: str | None) -> str | None:
    """Text safe to write to any table or log: characters UTF-8 cannot hold become backslash escapes."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _first_image(value) -> str | None:
    """MIRE stores a list of image paths; JSONL/CSV a single path."""
    if isinstance(value, list):
        return str(value[0]) if len(value) == 1 else None
    return None if value in (None, "") else str(value)


def _text_id(item: dict) -> str | None:
    return None if item.get("id") in (None, "") else str(item["id"])


def _from_mire_item(position: str, item) -> RawRecord | Rejection:
    if not isinstance(item, dict):
        return Rejection(RawRecord(position, None, None, None), "malformed", "is not a JSON object")
    undecodable = _undecodable_text(item)
    if undecodable:
        return Rejection(RawRecord(position, _shown(_text_id(item)), None, None), "not_utf8", undecodable)
    images = item.get("image", item.get("images"))
    record = RawRecord(
        position,
        _text_id(item),
        _first_image(images),
        item.get("output") or None,
    )
    if DIALOGUE_SUBTASK_MARKER in str(item.get("instruction", "")):
        return Rejection(record, "other_subtask", "belongs to the dialogue subtask, not image scenes")
    if isinstance(images, list) and len(images) != 1:
        return Rejection(record, "image_count", f"has {len(images)} images; an image-scene record has one")
    return record


def _read_mire_json(path: Path) -> list[RawRecord | Rejection]:
    try:
        document = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise DataFileError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    if not isinstance(document, list):
        raise DataFileError(f"{path}: a MIRE JSON file holds one list of records, found {type(document).__name__}")
    return [_from_mire_item(f"{path.name} record {index}", item) for index, item in enumerate(document)]


def _read_jsonl(path: Path) -> list[RawRecord | Rejection]:
    # Decode line by line so that one bad line is one rejected record, not a lost file.
    if not path.exists():
        raise DataFileError(f"{path}: data file does not exist")
    lines = path.read_bytes().splitlines()
    if not any(line.strip() for line in lines):
        raise DataFileError(f"{path}: data file is empty")
    rows: list[RawRecord | Rejection] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        position = f"{path.name} line {number}"
        try:
            item = json.loads(line.decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            rows.append(_undecodable_line(position, line, error))
            continue
        except json.JSONDecodeError as error:
            rows.append(Rejection(RawRecord(position, None, None, None), "malformed", f"malformed JSON: {error.msg}"))
            continue
        if not isinstance(item, dict):
            rows.append(Rejection(RawRecord(position, None, None, None), "malformed", "is not a JSON object"))
            continue
        undecodable = _undecodable_text(item)
        if undecodable:
            rows.append(Rejection(RawRecord(position, _shown(_text_id(item)), None, None), "not_utf8", undecodable))
            continue
        rows.append(RawRecord(position, _text_id(item), _first_image(item.get("image")), item.get("label") or None))
    return rows


def _undecodable_line(position: str, line: bytes, error: UnicodeDecodeError) -> Rejection:
    """A JSON line that is not UTF-8, named by its id too when the rest of the line parses."""
    try:
        item = json.loads(line.decode("utf-8-sig", errors="surrogateescape"))
    except json.JSONDecodeError:
        item = None
    record_id = _shown(_text_id(item)) if isinstance(item, dict) else None
    where = f"column {error.start + 1}: {line[error.start : error.start + 4]!r}"
    return Rejection(RawRecord(position, record_id, None, None), "not_utf8", f"is not UTF-8 text ({where}); {REENCODE}")


def _read_csv(path: Path) -> list[RawRecord | Rejection]:
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    missing = {"id", "image"} - set(reader.fieldnames or [])
    if missing:
        raise DataFileError(f"{path}: CSV lacks the column(s) {sorted(missing)}; it needs id, image and label")
    return [
        RawRecord(f"{path.name} row {number}", row["id"] or None, row["image"] or None, row.get("label") or None)
        for number, row in enumerate(reader, start=2)  # row 1 is the header
    ]


READERS = {".json": _read_mire_json, ".jsonl": _read_jsonl, ".csv": _read_csv}


def read_raw_records(path: str | Path) -> list[RawRecord | Rejection]:
    """Parse a data file into raw records (or early rejections), choosing the format by extension."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataFileError(f"{path}: unknown data format {path.suffix!r}; use .json (MIRE), .jsonl or .csv")
    return reader(path)


# ---------------------------------------------------------------- resolving and checking images


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def resolve_image_path(raw: str, data_file: Path, image_dir: Path | None, roots: list[Path]) -> Path | tuple[str, str]:
    """Find the image file a record names; return its resolved path, or (problem kind, message).

    Tried in order: the path as written (absolute, or relative to the data file), then relative to
    ``image_dir``, then the bare file name in ``image_dir`` (public MIRE files carry absolute paths
    of the machine that wrote them, e.g. /content/train/images/<name>.jpg).
    """
    written = Path(raw)
    candidates = [written if written.is_absolute() else data_file.parent / written]
    if image_dir is not None:
        if not written.is_absolute():
            candidates.append(image_dir / written)
        candidates.append(image_dir / written.name)
    escaping = None
    for candidate in candidates:
        resolved = Path(os.path.realpath(candidate))  # follows symlinks, so a link cannot leave the root
        if not resolved.is_file():
            continue
        if _inside(resolved, roots):
            return resolved
        escaping = escaping or resolved
    if escaping is not None:
        return (
            "image_escapes_root",
            f"image path {raw!r} escapes the data root ({', '.join(map(str, roots))})",
        )
    tried = ", ".join(str(candidate) for candidate in candidates)
    return "image_not_found", (
        f"image {raw!r} not found (tried {tried}); set data.image_dir to the folder that holds the images"
    )


def exif_orientation(image: Image.Image) -> tuple[int, str | None]:
    """The image's EXIF orientation (1 to 8, 1 when it has none) and, when its EXIF block cannot be read,
    why (the image is then taken as upright)."""
    raw = image.info.get("exif")
    if not raw:
        return 1, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Pillow reports a truncated EXIF block only as a warning
        try:
            exif = Image.Exif()
            exif.load(raw)  # parsed afresh: the parse at open time warned where no one was listening
            orientation = exif.get(EXIF_ORIENTATION, 1)
        except Exception as error:  # a malformed block raises anything: SyntaxError, struct.error, ...
            return 1, f"{type(error).__name__}: {error}"
    if caught:
        return 1, str(caught[0].message).strip()
    if not exif:
        return 1, "the EXIF block holds no readable tag"
    if orientation not in range(1, 9):
        return 1, f"EXIF orientation {orientation!r} is not one of 1 to 8"
    return orientation, None


def upright_copy(image: Image.Image, sha256: str, upright_image_dir: Path) -> Path:
    """The image turned upright per its EXIF orientation, saved losslessly as ``<sha256>.png`` (once: a
    cache shared by splits and runs, written atomically so that parallel ingestions cannot clash)."""
    path = upright_image_dir / f"{sha256}.png"
    if not path.exists():
        upright = ImageOps.exif_transpose(image)
        if upright.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
            upright = upright.convert("RGB")  # CMYK and YCbCr JPEGs: PNG cannot hold them
        encoded = io.BytesIO()
        upright.save(encoded, "PNG")
        upright_image_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, encoded.getvalue())
    return path


def inspect_image(path: Path, max_pixels: int, upright_image_dir: Path | None = None) -> dict | tuple[str, str]:
    """Return the image's sha256, width and height, or (problem kind, message).

    An image whose EXIF orientation is not upright is rotated once here: with ``upright_image_dir`` its
    ``image_path`` becomes an upright copy there (OCR, the scorer and LLaMA-Factory then see the same
    pixels; RapidOCR alone honours EXIF, Pillow's ``Image.open`` does not) and width and height are the
    copy's. ``exif_problem`` is the reason (``kind: message``) to flag a record whose image goes on as
    stored although its EXIF says otherwise, e.g. an unreadable EXIF block; None when there is none.
    """
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # A corrupt EXIF block warns at open; exif_orientation reads it again and reports it by record.
            warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size  # read from the header, before any pixel is decoded
            if width * height > max_pixels:
                return "image_too_large", (
                    f"image {path.name} is {width}x{height} = {width * height} pixels, "
                    f"above data.max_image_pixels = {max_pixels}"
                )
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                return "image_aspect_ratio", (
                    f"image {path.name} is {width}x{height}, a side more than {MAX_ASPECT_RATIO} times the other: "
                    "Qwen2-VL's image processor refuses it and OCR cannot read it; crop or pad the image"
                )
            image.load()  # decodes every pixel: catches truncated and corrupt files
            orientation, exif_problem = exif_orientation(image)
            if exif_problem:
                exif_problem = f"exif_unreadable: the EXIF block cannot be read ({exif_problem}); used as stored"
            inspected = {"image_sha256": sha256, "width": width, "height": height, "exif_problem": exif_problem}
            if orientation != 1 and upright_image_dir is not None:
                copy = upright_copy(image, sha256, upright_image_dir)
                if orientation >= 5:  # 5 to 8 turn the image a quarter
                    inspected |= {"width": height, "height": width}
                inspected |= {"image_path": str(copy), "oriented": True}
            elif orientation != 1:
                inspected["exif_problem"] = f"exif_not_applied: EXIF orientation {orientation}, used as stored"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return "image_unreadable", f"image {path.name} is unreadable: {error}"
    return inspected


# ---------------------------------------------------------------- the whole ingestion


def ingest_records(
    data_file: str | Path,
    *,
    label_set: list[str],
    labelled: bool,
    image_dir: str | Path | None = None,
    root: str | Path | None = None,
    max_image_pixels: int = 40_000_000,
    on_error: str = "fail",
    upright_image_dir: str | Path | None = None,
) -> IngestResult:
    """Validate every record of ``data_file`` and return the clean table and the rejected one.

    ``upright_image_dir`` holds the upright copies of images stored rotated (EXIF orientation, see
    ``inspect_image``); an image whose EXIF block is unreadable is ingested as stored, with a warning
    naming the record, and listed in ``flagged``.

    ``labelled`` is true for training data: a label is required and must be in ``label_set``.
    For unlabelled (test) data the label column is null whatever the file holds; truth for
    evaluation lives in its own file.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    data_file = Path(data_file).absolute()
    image_dir_path = Path(os.path.realpath(image_dir)) if image_dir else None
    if root:
        roots = [Path(os.path.realpath(root))]
    else:
        roots = [Path(os.path.realpath(data_file.parent))] + ([image_dir_path] if image_dir_path else [])
    known_labels = set(label_set)
    upright_dir = Path(upright_image_dir).absolute() if upright_image_dir else None

    parsed = read_raw_records(data_file)
    kept: list[dict] = []
    rejections: list[Rejection] = []
    first_seen: dict[str, str] = {}
    flagged: list[dict] = []
    for index, item in enumerate(parsed, start=1):
        if isinstance(item, Rejection):
            rejections.append(item)
            continue
        checked = _check_fields(item, labelled, known_labels, first_seen) or _check_image(
            item, data_file, image_dir_path, roots, max_image_pixels, upright_dir
        )
        if isinstance(checked, tuple):
            rejections.append(Rejection(item, *checked))
            continue
        first_seen[item.id] = item.position
        exif_problem = checked.pop("exif_problem")
        if exif_problem:
            log.warning("%s (id %s), image %s: %s", item.position, item.id, item.image, exif_problem)
            flagged.append({"id": item.id, "position": item.position, "image": item.image, "reason": exif_problem})
        kept.append({**checked, "id": item.id, "label": item.label if labelled else None})
        if index % 500 == 0:
            log.info("%s: checked %d of %d records", data_file.name, index, len(parsed))

    errors = [r for r in rejections if r.kind != "other_subtask"]  # filtering a subtask is not an error
    if errors and on_error == "fail":
        listing = "\n".join(f"  {format_rejection(r)}" for r in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        raise BadRecordsError(
            f"{len(errors)} bad record(s) in {data_file}:\n{listing}{more}\n"
            "Fix them, or set data.on_error: skip to reject them with their reasons and go on."
        )
    records = pd.DataFrame(kept, columns=RECORD_COLUMNS).astype({"label": "string"})
    rejected = pd.DataFrame(
        [{"record": r.record.position, "id": r.record.id, "reason": f"{r.kind}: {r.message}"} for r in rejections],
        columns=REJECTED_COLUMNS,
    )
    reasons: dict[str, int] = {}
    for rejection in rejections:
        reasons[rejection.kind] = reasons.get(rejection.kind, 0) + 1
    for rejection in errors:
        log.warning("rejected %s", format_rejection(rejection))
    oriented = sum(bool(record.get("oriented")) for record in kept)
    log.info(
        "%s: %d records in, %d out, %d rejected, %d turned upright",
        data_file.name,
        len(parsed),
        len(records),
        len(rejected),
        oriented,
    )
    return IngestResult(records, rejected, records_in=len(parsed), reasons=reasons, flagged=flagged, oriented=oriented)


def format_rejection(rejection: Rejection) -> str:
    name = f" (id {rejection.record.id})" if rejection.record.id else ""
    return f"{rejection.record.position}{name}: {rejection.message}"


def _check_fields(
    record: RawRecord, labelled: bool, known_labels: set[str], first_seen: dict[str, str]
) -> tuple[str, str] | None:
    if record.id is None:
        return "missing_id", "has no id"
    if record.id in first_seen:
        return "duplicate_id", f"duplicate id {record.id!r}, first seen at {first_seen[record.id]}"
    if record.image is None:
        return "missing_image", "names no image"
    if labelled and record.label is None:
        return "missing_label", "has no label; training records need one"
    if record.label is not None and record.label not in known_labels:
        # Test labels are never used, but one outside the set says the data file or the labels file is the wrong one.
        unused = "" if labelled else "; test labels are unused, but this one says the data or labels file is wrong"
        return "unknown_label", f"label {record.label!r} is not in the label set (the labels file){unused}"
    return None


def _check_image(
    record: RawRecord,
    data_file: Path,
    image_dir: Path | None,
    roots: list[Path],
    max_pixels: int,
    upright_image_dir: Path | None,
) -> dict | tuple[str, str]:
    resolved = resolve_image_path(record.image, data_file, image_dir, roots)
    if isinstance(resolved, tuple):
        return resolved
    inspected = inspect_image(resolved, max_pixels, upright_image_dir)
    return inspected if isinstance(inspected, tuple) else {"image_path": str(resolved), **inspected}


def write_ingest_outputs(
    result: IngestResult, records_path: str | Path, rejected_path: str | Path, counts_path: str | Path
) -> None:
    """Write the clean table (parquet), the rejected table (CSV) and the counts (JSON)."""
    result.records.to_parquet(records_path, index=False)
    result.rejected.to_csv(rejected_path, index=False)
    Path(counts_path).write_text(json.dumps(result.counts(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_split_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Ingested tables of several splits in one frame, each row tagged with its split (the file's stem)."""
    return pd.concat([pd.read_parquet(path).assign(split=Path(path).stem) for path in paths], ignore_index=True)
