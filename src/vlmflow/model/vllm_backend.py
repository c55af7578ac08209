"""The vLLM scoring backend (``score.backend: vllm``): the transformers backend's tables, computed by vLLM.

Prompts, answers and images go through the same ``PromptEncoder`` as the transformers backend
(``vlmflow.model.encoding``), so both backends score the same token ids and pixels and ``score_table``
drives both; only the forward passes differ.

Scores. A label's score is the summed log-probability of its answer tokens after the part every label
shares (that part adds the same to every label). vLLM reads them as next-token log-probabilities: one
one-token request per distinct answer prefix (a trie over the labels' answers), asking for exactly the
tokens that follow that prefix in some label (``logprob_token_ids``). With prefix caching, each image's
prompt and pixels run once, and each request computes only the tokens its cached prefix lacks. Not
``prompt_logprobs`` on one request per label: vLLM skips the prefix cache for such requests, so every label
would run the whole prompt and image again (``SamplingParams.skip_reading_prefix_cache``), and where it is
made to read the cache, the positions served from it come back without log-probabilities.

Reasons. Greedy, with the model's repetition penalty (transformers' greedy ``generate`` applies the
generation config's), stopped at <|im_end|> or once the text holds the stop string; the text is the
tokenizer's decoding of the generated ids, as the transformers backend decodes them, so a stop string that
ends inside a token keeps that whole token in both.

vLLM lives in its own venv (``make install-vllm`` makes .venv-vllm): it needs newer transformers and torch
than the workflow's venv pins. ``score_tables_in_vllm_venv`` runs this module there
(``python -m vlmflow.model.vllm_backend SPEC.json``), the model loaded once for all tables. Nothing here
imports vLLM at module level: the workflow's venv imports this module without it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import vlmflow
from vlmflow.model.encoding import (
    ADAPTER_CONFIG,
    CPU_BATCH_SIZE,
    PromptEncoder,
    ScoringRequest,
    load_encoder,
    load_model,
    longest_sequence_tokens,
    score_table,
    shared_prefix_length,
    softmax,
)
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.outputs import write_bytes_atomically

log = logging.getLogger(__name__)

MODULE = "vlmflow.model.vllm_backend"
DONE = "vlmflow-vllm-table-done: "  # the line the entry point prints after writing each table
# vLLM's SamplingParams refuses longer logprob_token_ids lists (MAX_LOGPROB_TOKEN_IDS in vLLM 0.32).
MAX_TOKENS_PER_READ = 128
# On the CPU: the engine in this process (model load 4 s instead of 20 s) and a 1 GiB KV cache, not a
# share of the machine's memory. A value the user set wins.
CPU_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
# LLaMA-Factory 0.9.5 refuses transformers > 5.6 at import; only its template and plugin run here.
VLLM_VENV_ENVIRONMENT = {"DISABLE_VERSION_CHECK": "1"}
PARENT_PID = "VLMFLOW_VLLM_PARENT_PID"  # the entry point ends with the process that started it
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The job leases its card(s) (runtime.gpu_lease), so nothing else runs there: vLLM takes nearly all of it for
# weights, activations and KV cache (a larger cache keeps more images' prompts for their labels' reads). The
# tenth left holds what its memory profile does not count: the CUDA context, the kernels' workspaces and the
# allocator's fragmentation. (vLLM's own default as well; set here so that the reason is written down.)
GPU_MEMORY_UTILIZATION = 0.9
# max_model_len is the longest sequence a table can make (``longest_sequence_tokens``) and this margin: the
# processor rounds each image side to whole patches, up to (width + height) / 56 visual tokens above the pixel
# cap's count (33 for a 1:3 screen at 768 x 768 pixels, 50 at 1:10). 128 tokens of a 7B's cache are 7 MiB.
MODEL_LEN_MARGIN = 128
# A reason is scored as its text encoded again inside the JSON answer. A trained model's reason takes about the
# tokens it was generated in; a random model's byte fragments (each decoded to U+FFFD) and control characters
# (escaped to \u0016) up to 5.5 times as many (the tests' tiny models, 100-token reasons). vLLM refuses a request
# longer than max_model_len, while room to spare costs one sequence's cache: 800 tokens of a 7B, 45 MiB.
REASON_TOKENS_GROWTH = 8
# Images per engine call on a GPU (score.batch_size null). vLLM batches within a call and keeps the call's KV in
# its own preallocated cache, so memory does not bound the call; a bigger call keeps its scheduler full (on the
# CPU its reason-first rate grew 17x from 1 to 64 images a call, docs/benchmarks.md).
GPU_BATCH_SIZE = 64


def one_image_placeholder(ids: list[int], image_token_id: int) -> list[int]:
    """``ids`` with each run of visual tokens cut to one: vLLM expands an image's placeholder itself, and
    would expand every token of an already expanded run again."""
    return [token for i, token in enumerate(ids) if token != image_token_id or i == 0 or ids[i - 1] != token]


def answer_reads(answers: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Each answer prefix whose next-token log-probabilities a label's score needs (from the part all
    answers share on), with the tokens that follow it in some answer."""
    shared = shared_prefix_length(answers)
    followers: dict[tuple[int, ...], set[int]] = {}
    for answer in answers:
        for end in range(shared, len(answer)):
            followers.setdefault(tuple(answer[:end]), set()).add(answer[end])
    return {prefix: sorted(tokens) for prefix, tokens in followers.items()}


@dataclass
class VllmScorer:
    """The vLLM backend: a ``vllm.LLM`` and the ``PromptEncoder`` of its model. Every request of a
    ``score_many`` or ``generate_many`` call goes to the engine in one ``generate``."""

    llm: object  # vllm.LLM
    encoder: PromptEncoder
    repetition_penalty: float = 1.0
    merged: tempfile.TemporaryDirectory | None = None  # a LoRA fold's merged weights, kept while the engine runs

    @property
    def image_token_id(self) -> int:
        return self.encoder.tokenizer.convert_tokens_to_ids(self.encoder.processor.image_token)

    def _encode(self, request: ScoringRequest) -> tuple[dict, list[int]]:
        """The image as the plugin resizes it (vLLM's processor then sizes it as LLaMA-Factory's does), with
        its content hash, and the prompt's ids with the visual tokens expanded."""
        image = self.encoder.regularized_image(request.image)
        # vLLM hashes an image for its caches on every request that carries it; hashed here once per image.
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(f"{image.mode} {image.size}".encode())
        ids = self.encoder.prompt_ids(image, request.prompt, request.system)
        return {"image": image, "uuid": digest.hexdigest()}, ids

    def _prompt(self, image: dict, ids: list[int]) -> dict:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(
            prompt_token_ids=one_image_placeholder(ids, self.image_token_id),
            multi_modal_data={"image": image["image"]},
            multi_modal_uuids={"image": [image["uuid"]]},
        )

    @staticmethod
    def _check_expansion(output, expected_length: int, request: ScoringRequest) -> None:
        # A different visual-token count means vLLM sized the image otherwise than LLaMA-Factory's plugin.
        if len(output.prompt_token_ids) != expected_length:
            raise RuntimeError(
                f"vLLM expanded the image of {request.image} to {len(output.prompt_token_ids)} prompt tokens, "
                f"LLaMA-Factory's plugin to {expected_length}: the two resize the image differently"
            )

    def score_many(
        self, requests: list[ScoringRequest], labels: list[str], answers: list[tuple[str, str]]
    ) -> np.ndarray:
        """Probabilities (requests x labels), ``answers[i]`` the text around the label of request i."""
        from vllm import SamplingParams

        prompts, params, keys, label_answers = [], [], [], []
        for index, (request, (before, after)) in enumerate(zip(requests, answers, strict=True)):
            image, ids = self._encode(request)
            label_answers.append(self.encoder.answer_ids(labels, before, after))
            for prefix, tokens in answer_reads(label_answers[-1]).items():
                for start in range(0, len(tokens), MAX_TOKENS_PER_READ):
                    chunk = tokens[start : start + MAX_TOKENS_PER_READ]
                    prompts.append(self._prompt(image, ids + list(prefix)))
                    # Raw log-softmax over the whole vocabulary (logprobs_mode's default): what transformers scores.
                    params.append(
                        SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunk, detokenize=False)
                    )
                    keys.append((index, prefix, chunk, len(ids) + len(prefix)))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        logprobs: dict[tuple, dict[int, float]] = {}
        for (index, prefix, chunk, length), output in zip(keys, outputs, strict=True):
            self._check_expansion(output, length, requests[index])
            [step] = output.outputs[0].logprobs  # the one position read: the token after the prefix
            logprobs.setdefault((index, prefix), {}).update({token: step[token].logprob for token in chunk})
        probabilities = []
        for index, answer_ids in enumerate(label_answers):
            shared = shared_prefix_length(answer_ids)
            scores = [
                sum(logprobs[(index, tuple(answer[:end]))][answer[end]] for end in range(shared, len(answer)))
                for answer in answer_ids
            ]
            probabilities.append(softmax(np.array(scores)))
        return np.stack(probabilities)

    def generate_many(
        self,
        requests: list[ScoringRequest],
        *,
        answer_prefix: str = "",
        stop: str | None = None,
        max_new_tokens: int,
    ) -> list[str]:
        """Greedy continuation of each request's answer after ``answer_prefix``; stops at <|im_end|> or once
        the text holds ``stop`` (kept in the text, as transformers' ``stop_strings`` keeps it)."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=0.0,
            repetition_penalty=self.repetition_penalty,
            stop=[stop] if stop else None,
            include_stop_str_in_output=True,
        )
        prefix_ids = self.encoder.text_ids(answer_prefix)
        prompts, lengths = [], []
        for request in requests:
            image, ids = self._encode(request)
            prompts.append(self._prompt(image, ids + prefix_ids))
            lengths.append(len(ids) + len(prefix_ids))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        texts = []
        for request, length, output in zip(requests, lengths, outputs, strict=True):
            self._check_expansion(output, length, request)
            texts.append(self.encoder.tokenizer.decode(list(output.outputs[0].token_ids), skip_special_tokens=True))
        return texts

    def automatic_batch_size(self, *_) -> int:
        """Images per engine call (score.batch_size null): ``GPU_BATCH_SIZE`` on a GPU, ``CPU_BATCH_SIZE`` else."""
        import torch

        return GPU_BATCH_SIZE if torch.cuda.is_available() else CPU_BATCH_SIZE


def merge_lora(adapter_dir: str | Path, out_dir: Path, dtype: str) -> None:
    """A LoRA fold's adapter merged into its base model, saved with the fold's processor in ``out_dir``.

    Merged as the transformers backend merges it (``load_model``), so both score the same weights. vLLM's own
    LoRA layers reach the vision tower, which LLaMA-Factory's LoRA trains with ``freeze_vision_tower: false``,
    only as an experimental option (``enable_tower_connector_lora``), and cost time on every token.
    """
    import torch
    from transformers import AutoProcessor

    load_model(adapter_dir, getattr(torch, dtype)).save_pretrained(out_dir)
    AutoProcessor.from_pretrained(adapter_dir).save_pretrained(out_dir)


def load_vllm_scorer(
    model_dir: str | Path,
    *,
    dtype: str | None = None,
    image_max_pixels: int | None = None,
    image_min_pixels: int | None = None,
    encoder: PromptEncoder | None = None,
    enforce_eager: bool | None = None,
    seed: int = 0,
    **engine_args,
) -> VllmScorer:
    """A vLLM engine on ``model_dir`` (a LoRA fold is merged first, see ``merge_lora``) with its
    ``PromptEncoder`` (``encoder``, or one loaded with the pixel limits: the training's, ``None`` for
    LLaMA-Factory's defaults); float32 on the CPU and bfloat16 on a GPU unless ``dtype``. ``engine_args`` go to
    ``vllm.LLM`` (``max_model_len``: see ``max_model_len``); ``GPU_MEMORY_UTILIZATION`` unless they say."""
    import torch
    from vllm import LLM

    on_gpu = torch.cuda.is_available()
    dtype = dtype or ("bfloat16" if on_gpu else "float32")
    if not on_gpu:
        # A one-token read recomputes what follows its last full cached block: the CPU attention's smallest
        # block (32) instead of its default 128 (a GPU's default is 16).
        engine_args.setdefault("block_size", 32)
    engine_args.setdefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)  # the CPU's KV: CPU_ENVIRONMENT
    encoder = encoder or load_encoder(model_dir, image_max_pixels, image_min_pixels)
    weights, merged = Path(model_dir), None
    if (weights / ADAPTER_CONFIG).is_file():
        merged = tempfile.TemporaryDirectory(prefix="vlmflow-merged-lora-")
        log.info("merging the LoRA adapter %s into its base model for vLLM", model_dir)
        merge_lora(model_dir, Path(merged.name), dtype)
        weights = Path(merged.name)
    llm = LLM(
        str(weights),
        dtype=dtype,
        # CUDA graphs pay on a GPU; on the CPU, compiling costs more than a scoring job gains.
        enforce_eager=not on_gpu if enforce_eager is None else enforce_eager,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=seed,
        **engine_args,
    )
    # With the engine in this process (CPU_ENVIRONMENT), vLLM's CPU worker turns torch.set_num_threads into a
    # warning that its input processing then sets off twice a request: thousands of identical log lines.
    # (Set once the engine is up: vLLM sets its loggers' levels while it starts.)
    logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)
    repetition_penalty = llm.get_default_sampling_params().repetition_penalty
    return VllmScorer(llm, encoder, repetition_penalty, merged)


def die_with_parent() -> None:
    """End this process when the one that started it ends: a scoring job killed outright (kill -9, a lost
    node) must not leave its vLLM engine holding the GPU. Linux only; elsewhere a no-op. (Strictly, the signal
    comes when the starting thread ends; ``score_tables_in_vllm_venv``'s thread waits for this process.)"""
    parent = os.environ.get(PARENT_PID)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # it ended before prctl could watch it
        sys.exit("vlmflow.model.vllm_backend: the process that started it is gone")


def max_model_len(
    encoder: PromptEncoder,
    tables: list[pd.DataFrame],
    labels: list[str],
    variant: PromptVariant,
    reason_max_new_tokens: int | None,
) -> int:
    """vLLM's ``max_model_len`` for scoring ``tables``: their longest sequence, a reason counted at
    ``REASON_TOKENS_GROWTH`` tokens a generated one, and ``MODEL_LEN_MARGIN``. The model's own limit (32k to 256k
    tokens) would make vLLM reserve room for one such sequence, which a 7B's cache on a 24 GB card cannot hold
    beside its weights."""
    reason = None if reason_max_new_tokens is None else reason_max_new_tokens * REASON_TOKENS_GROWTH
    longest = max(longest_sequence_tokens(encoder, table, labels, variant, reason) for table in tables)
    return longest + MODEL_LEN_MARGIN


def main(argv: list[str] | None = None) -> None:
    """Entry point in the vLLM venv: score each table of a spec (see ``score_tables_in_vllm_venv``)."""
    die_with_parent()
    [spec_path] = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    encoder = load_encoder(spec["model_dir"], **(spec.get("image_pixels") or {}))
    variant = PromptVariant.from_config(spec["variant"])
    tables = [pd.read_parquet(source) for source, _ in spec["tables"]]
    length = max_model_len(encoder, tables, spec["labels"], variant, spec["reason_max_new_tokens"])
    scorer = load_vllm_scorer(spec["model_dir"], dtype=spec.get("dtype"), encoder=encoder, max_model_len=length)
    settings = {"reason_max_new_tokens": spec["reason_max_new_tokens"], "batch_size": spec["batch_size"]}
    for table, (_, target) in zip(tables, spec["tables"], strict=True):
        scores = score_table(scorer, table, spec["labels"], variant, **settings)
        write_bytes_atomically(target, scores.to_parquet(index=False))  # whole or not at all
        print(f"{DONE}{target}", flush=True)


def on_cpu(device: str) -> bool:
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def vllm_environment(device: str) -> dict[str, str]:
    """The environment of the vLLM venv's process: this one's, plus what vLLM and LLaMA-Factory need there."""
    env = dict(os.environ)
    for name, value in {**VLLM_VENV_ENVIRONMENT, **(CPU_ENVIRONMENT if on_cpu(device) else {})}.items():
        env.setdefault(name, value)
    env["PYTHONUNBUFFERED"] = "1"  # its log lines as they come
    env[PARENT_PID] = str(os.getpid())
    # The vlmflow this process runs, whichever checkout the vLLM venv was installed from.
    source = str(Path(vlmflow.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def score_tables_in_vllm_venv(
    model_dir: str | Path,
    tables: list[pd.DataFrame],
    labels: list[str],
    variant: PromptVariant,
    *,
    python: str | Path,
    reason_max_new_tokens: int,
    batch_size: int | None,
    image_pixels: dict | None = None,
    device: str = "auto",
) -> Iterator[pd.DataFrame]:
    """``score_table`` of each table by the vLLM backend, run by ``python`` (the vLLM venv's interpreter)
    with the model loaded once; yields each score table as the child writes it. ``reason_max_new_tokens`` and
    ``batch_size`` (``None``: automatic) are the caller's, from the schema. Its log lines go to this process's
    log; a failure raises naming the command and its last lines."""
    python = Path(python)
    if not python.is_file():
        raise FileNotFoundError(
            f"score.backend vllm scores in the vLLM venv, but its Python {python} does not exist: "
            "run `make install-vllm` (or point score.vllm_python at it)"
        )
    with tempfile.TemporaryDirectory(prefix="vlmflow-vllm-") as folder:
        pairs = [
            (Path(folder) / f"prompts{i}.parquet", Path(folder) / f"scores{i}.parquet") for i in range(len(tables))
        ]
        for table, (source, _) in zip(tables, pairs, strict=True):
            table.to_parquet(source, index=False)
        spec = {
            "model_dir": str(Path(model_dir).resolve()),
            "tables": [[str(source), str(target)] for source, target in pairs],
            "labels": list(labels),
            "variant": dataclasses.asdict(variant),
            "reason_max_new_tokens": reason_max_new_tokens,
            "batch_size": batch_size,
            "image_pixels": dict(image_pixels or {}),
            "dtype": "float32" if on_cpu(device) else "bfloat16",  # as the transformers backend picks it
        }
        spec_path = Path(folder) / "spec.json"
        spec_path.write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
        command = [str(python), "-m", MODULE, str(spec_path)]
        log.info("scoring %d table(s) with vLLM: %s", len(tables), shlex.join(command))
        last_lines: deque[str] = deque(maxlen=40)
        done = 0
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=vllm_environment(device),
        )
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                if line.startswith(DONE) and done < len(pairs) and line[len(DONE) :] == str(pairs[done][1]):
                    yield pd.read_parquet(pairs[done][1])
                    done += 1
                    continue
                last_lines.append(line)
                log.info("vllm: %s", line)
            returncode = process.wait()
        finally:
            if process.poll() is None:  # the caller stopped early, or this process is being stopped
                process.kill()
                process.wait()
        if returncode != 0 or done != len(pairs):
            output = "\n".join(last_lines)
            raise RuntimeError(
                f"vLLM scoring failed (exit code {returncode}, {done} of {len(pairs)} tables written): "
                f"{shlex.join(command)}\nits last output lines:\n{output}"
            )


if __name__ == "__main__":
    main()
