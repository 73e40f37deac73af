"""The tinker adapters' own rules, without a server: SDK errors translated at the edge, the
request-id ledger, and what is refused before anything is sent."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import httpx
import pytest
import tinker

from crucible_kitchen.adapters.local_torch import LocalTokenizer
from crucible_kitchen.adapters.tinker import HfTokenizer, TinkerSession, TinkerTrainingClient
from crucible_kitchen.adapters.tinker._errors import translate
from crucible_kitchen.adapters.tinker._futures import RequestLedger, TinkerFuture
from crucible_kitchen.errors import (
    InvalidRequest,
    PermanentBackendError,
    RequestExpired,
    RequestIdConflict,
    ResourceNotFound,
    TransientBackendError,
)
from crucible_kitchen.ports import Datum, ModelInput, TensorData
from crucible_kitchen.testing import check_tokenizer

REQUEST = httpx.Request("POST", "http://127.0.0.1/api/v1/forward_backward")


def status_error(status: int) -> tinker.APIStatusError:
    kinds: dict[int, type[tinker.APIStatusError]] = {
        400: tinker.BadRequestError,
        401: tinker.AuthenticationError,
        404: tinker.NotFoundError,
        409: tinker.ConflictError,
        422: tinker.UnprocessableEntityError,
        429: tinker.RateLimitError,
        503: tinker.InternalServerError,
    }
    response = httpx.Response(status, request=REQUEST)
    return kinds[status](f"HTTP {status}", response=response, body=None)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (tinker.APIConnectionError(request=REQUEST), TransientBackendError),
        (tinker.APITimeoutError(request=REQUEST), TransientBackendError),
        (status_error(409), TransientBackendError),
        (status_error(429), TransientBackendError),
        (status_error(503), TransientBackendError),
        (status_error(400), InvalidRequest),
        (status_error(422), InvalidRequest),
        (status_error(404), ResourceNotFound),
        (status_error(401), PermanentBackendError),
        (tinker.RequestFailedError("bad datum", "r1", "user"), InvalidRequest),
        (tinker.RequestFailedError("oom", "r1", "server"), PermanentBackendError),
        (RuntimeError("this TrainingClient is poisoned"), PermanentBackendError),
    ],
)
def test_sdk_errors_become_the_error_trees(error: Exception, kind: type[Exception]) -> None:
    translated = translate(
        error, port="training_client", operation="optim_step", request_id="r1", resource="p"
    )
    assert type(translated) is kind
    assert (translated.port, translated.operation, translated.request_id) == (  # type: ignore[attr-defined]
        "training_client",
        "optim_step",
        "r1",
    )
    assert type(error).__name__ in str(translated)


def _future(outcome: object) -> TinkerFuture[Any]:
    raw: Future[Any] = Future()
    if isinstance(outcome, BaseException):
        raw.set_exception(outcome)
    else:
        raw.set_result(outcome)
    return TinkerFuture(raw, lambda value: value, port="training_client", operation="optim_step")


def test_the_ledger_answers_a_resent_request_and_forgets_a_failed_one() -> None:
    ledger = RequestLedger("training_client", retain=2)
    done = ledger.record("optim_step", "a", b"1", _future("applied"))
    assert ledger.find("optim_step", "a", b"1") is done
    with pytest.raises(RequestIdConflict, match="already used for a different optim_step"):
        ledger.find("forward_backward", "a", b"2")
    ledger.record("optim_step", "b", b"1", _future(status_error(503)))
    assert ledger.find("optim_step", "b", b"1") is None  # failed: re-sending sends it
    ledger.record("optim_step", "c", b"1", _future("applied"))
    ledger.record("optim_step", "d", b"1", _future("applied"))
    with pytest.raises(RequestExpired):
        ledger.find("optim_step", "a", b"1")
    with pytest.raises(RequestIdConflict):
        ledger.find("optim_step", "a", b"other")


@pytest.mark.anyio
async def test_a_future_gives_the_same_translated_error_every_time() -> None:
    future = _future(status_error(429))
    errors = []
    for _ in range(2):
        with pytest.raises(TransientBackendError) as caught:
            await future.result()
        assert isinstance(caught.value.__cause__, tinker.RateLimitError)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert await _future("value").result() == "value"


@pytest.mark.anyio
async def test_bad_requests_are_refused_before_anything_is_sent() -> None:
    # No server listens there: any request sent would fail with a connection error instead.
    client = TinkerTrainingClient(
        TinkerSession(base_url="http://127.0.0.1:9", api_key="tml-none"),
        base_model="tiny",
        tokenizer=LocalTokenizer.byte(),
    )
    empty_input = Datum(
        model_input=ModelInput.empty(),
        loss_fn_inputs={"target_tokens": TensorData(dtype="int64", data=())},
    )
    no_weights = Datum(
        model_input=ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": TensorData(dtype="int64", data=(2, 3))},
    )
    with pytest.raises(InvalidRequest, match="data is empty"):
        await client.forward_backward([], "cross_entropy", request_id="a")
    with pytest.raises(InvalidRequest, match="empty model input"):
        await client.forward([empty_input], "cross_entropy")
    with pytest.raises(InvalidRequest, match="lacks loss input 'weights'"):
        await client.forward_backward([no_weights], "cross_entropy", request_id="b")
    with pytest.raises(InvalidRequest, match="unknown loss_fn 'hinge'"):
        await client.forward([no_weights], "hinge")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="name '' must be non-empty"):
        await client.save_state("", request_id="c")
    with pytest.raises(InvalidRequest, match="lora_rank 0"):
        TinkerTrainingClient(TinkerSession(), base_model="tiny", lora_rank=0)


def byte_level_hf_tokenizer() -> Any:
    """A Hugging Face fast tokenizer made offline: byte-level BPE with no merges, plus an
    end-of-sequence token added on top of its 256 byte ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|eos|>")


def test_a_hugging_face_tokenizer_is_the_tokenizer_port() -> None:
    check_tokenizer(lambda: HfTokenizer(byte_level_hf_tokenizer()))
    tokenizer = HfTokenizer(byte_level_hf_tokenizer())
    assert tokenizer.vocab_size == 257  # the added end-of-sequence token counts
    assert tokenizer.eos_token_id == 256
    assert tokenizer.bos_token_id is None
    assert tokenizer.decode([*tokenizer.encode("hi"), 256], skip_special_tokens=True) == "hi"
