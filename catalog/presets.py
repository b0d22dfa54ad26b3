"""Generations that other tools wrote, read as the catalog's completion records.

``catalog import-completions --preset lm-eval`` and ``--preset inspect`` read these files
with the formats their tools document (no import of the tools), one record per prompt:
``prompt_text`` (what the model was given), ``completions`` (every generation for it) and
the sampling condition where the file states it (``temperature``, ``top_p``, ``top_k``,
``max_new_tokens``). Family, stage, model and task come from ``--set`` (or ``--map``), as
with the vllm preset. The records are written to a JSON Lines file that the ordinary
completions import reads, so every rule of :func:`catalog.imports.import_completions` holds
(one transaction, a bad record fails the file, a re-import replaces its runs).

- **lm-evaluation-harness** ``--log_samples`` files (``samples_<task>_<time>.jsonl``), of
  ``generate_until`` tasks: one line per document (and filter); the prompt is the request's
  context (``arguments.gen_args_0.arg_0``), the completions are every repeat's raw response
  (``resps``; ``filtered_resps`` only where ``resps`` is absent: the catalog's normalizer
  extracts answers itself), the condition comes from the request's generation arguments
  (``do_sample: false`` is greedy: ``top_k`` 1). A document logged once per filter is
  read once. Log-likelihood tasks are refused (their responses are scores).
- **inspect_ai** eval logs in the JSON format (``.json``), or ``.eval`` logs (zstd-compressed
  zips) through inspect_ai's own reader when it is installed: one record per sample and
  epoch; the prompt is the sample's input (its last user message), the
  completions are its output's choices, the condition comes from the log's generation
  config (``temperature``, ``top_p``, ``top_k``, ``max_tokens``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput


def lm_eval_records(path: Path) -> Iterator[dict[str, Any]]:
    """The completion records of an lm-evaluation-harness ``--log_samples`` file."""
    seen: set[Any] = set()
    with _opened(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            sample = _json_object(line, f"{path}: line {number}")
            where = f"{path}: line {number}"
            key = sample.get("doc_id", number)
            if key in seen:  # the same document under another filter: the same responses
                continue
            seen.add(key)
            arguments = sample.get("arguments")
            request = arguments.get("gen_args_0") if isinstance(arguments, Mapping) else None
            if not isinstance(request, Mapping) or not isinstance(request.get("arg_0"), str):
                raise InvalidInput(f"{where}: no arguments.gen_args_0.arg_0 (the prompt); is "
                                   "this an lm-eval --log_samples file?")
            generation = request.get("arg_1")
            if not isinstance(generation, Mapping):
                raise InvalidInput(
                    f"{where}: not a generate_until sample (its responses are log-likelihood "
                    "scores, not generations); import generate_until tasks only")
            responses = sample.get("resps", sample.get("filtered_resps"))
            yield {"prompt_text": request["arg_0"],
                   "completions": _texts(responses, where, "resps"),
                   **_lm_eval_condition(generation)}


def _lm_eval_condition(generation: Mapping[str, Any]) -> dict[str, Any]:
    condition: dict[str, Any] = {}
    if generation.get("do_sample") is False:
        condition["top_k"] = 1  # greedy decoding
    elif "temperature" in generation:
        condition["temperature"] = generation["temperature"]
    for source, column in (("top_p", "top_p"), ("top_k", "top_k"),
                           ("max_gen_toks", "max_new_tokens")):
        if generation.get(source) is not None and column not in condition:
            condition[column] = generation[source]
    return condition


def inspect_records(path: Path) -> Iterator[dict[str, Any]]:
    """The completion records of an inspect_ai eval log (``.eval`` or ``.json``)."""
    header, samples = _inspect_log(path)
    condition = _inspect_condition(header)
    for where, sample in samples:
        choices = ((sample.get("output") or {}).get("choices")) or []
        texts = [_message_text((choice or {}).get("message"), where) for choice in choices]
        if not texts:
            raise InvalidInput(f"{where}: the sample has no output choices")
        yield {"prompt_text": _prompt_of(sample.get("input"), where), "completions": texts,
               **condition}


def _inspect_log(path: Path) -> tuple[dict, Iterator[tuple[str, dict]]]:
    log = _read_eval_log(path) if path.suffix.lower() == ".eval" else _json_object(
        _read_text(path), str(path))
    if not isinstance(log.get("eval"), Mapping):
        raise InvalidInput(f"{path}: not an inspect eval log (no 'eval' header)")
    samples = log.get("samples") or []
    if not samples:
        raise InvalidInput(f"{path}: the log has no samples (was it written with "
                           "log_samples off, or did the evaluation not finish?)")
    return log, ((f"{path}: sample {s.get('id')} epoch {s.get('epoch')}", s) for s in samples)


def _read_eval_log(path: Path) -> dict:
    """An ``.eval`` log (a zstd-compressed zip) through inspect_ai's own reader."""
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise InvalidInput(
            f"{path}: an .eval log is read by inspect_ai (pip install inspect-ai), or convert "
            "it to JSON first: inspect log convert --to json"
        ) from None
    try:
        return read_eval_log(str(path)).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001 - any failure of the reader: not a readable log
        raise InvalidInput(f"{path}: inspect_ai cannot read it ({type(exc).__name__})") from None


def _inspect_condition(log: Mapping[str, Any]) -> dict[str, Any]:
    evaluation = log.get("eval") or {}
    config = {}
    for given in ((log.get("plan") or {}).get("config"), evaluation.get("model_generate_config")):
        config.update({k: v for k, v in (given or {}).items() if v is not None})
    condition = {column: config[source] for source, column in (
        ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
        ("max_tokens", "max_new_tokens")) if config.get(source) is not None}
    return condition


def _prompt_of(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        users = [m for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        if users:
            return _message_text(users[-1], where)
    raise InvalidInput(f"{where}: the sample's input is neither a text nor chat messages")


def _message_text(message: Any, where: str) -> str:
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, in order
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, Mapping) and part.get("type") == "text")
    raise InvalidInput(f"{where}: a message without text content")


def _texts(responses: Any, where: str, field: str) -> list[str]:
    """Every text in a (nested) list of responses, in order."""
    texts: list[str] = []
    pending = [responses]
    while pending:
        item = pending.pop(0)
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list):
            pending[:0] = item
        else:
            raise InvalidInput(f"{where}: {field} holds {type(item).__name__}, not texts")
    if not texts:
        raise InvalidInput(f"{where}: {field} holds no generations")
    return texts


def _json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a JSON object")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read it ({exc})") from None


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            yield handle
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read it ({exc})") from None


READERS = {"lm-eval": lm_eval_records, "inspect": inspect_records}
SUFFIXES = {"lm-eval": (".jsonl",), "inspect": (".eval", ".json")}


@contextlib.contextmanager
def converted(preset: str, path: str | Path) -> Iterator[Path]:
    """A JSON Lines file of the completion records of ``path``, a file that the tool named by
    ``preset`` wrote (deleted afterwards)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES[preset]:
        raise InvalidInput(f"{path}: --preset {preset} reads {' or '.join(SUFFIXES[preset])} "
                           "files")
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    with tempfile.TemporaryDirectory(prefix="catalog-preset-") as directory:
        flat = Path(directory) / f"{path.stem}.jsonl"
        with flat.open("w", encoding="utf-8") as out:
            for record in READERS[preset](path):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        yield flat
