"""The example of docs/guides/reference-math.md: the loss math beside tinker-cookbook and TRL.

Run it with ``python docs/examples/reference_math.py`` (it needs the ``torch`` extra): ``main``
runs on asyncio, then on trio, on the in-memory noop backend.
"""

from __future__ import annotations

import importlib.util
import math

import anyio
import torch

from crucible_kitchen import Kitchen
from crucible_kitchen.training import ByteTokenizer, Message, bits_per_byte, get_renderer
from crucible_kitchen.training.losses import dpo_loss, topk_reverse_kl_loss


def dpo_variants() -> None:
    """TRL's DPO losses on one pair: dc = 0.5, dr = -0.5, beta = 0.5, so z = 0.5."""
    pair = [torch.tensor([v], dtype=torch.float64) for v in (-3.0, -4.0, -3.5, -3.5)]
    lengths = {"chosen_lengths": torch.tensor([2.0]), "rejected_lengths": torch.tensor([5.0])}
    sigmoid = dpo_loss(*pair, beta=0.5)
    hinge = dpo_loss(*pair, beta=0.5, loss_type="hinge")
    ipo = dpo_loss(*pair, beta=0.5, loss_type="ipo", **lengths)
    assert math.isclose(float(sigmoid.loss), math.log1p(math.exp(-0.5)))
    assert math.isclose(float(hinge.loss), 0.5)  # max(0, 1 - z)
    assert math.isclose(float(ipo.loss), (0.5 / 2 + 0.5 / 5 - 1.0) ** 2)  # per-token ratios


def top_k_and_bits_per_byte() -> None:
    """Top-K reverse KL is 0 when the student's renormalized top K match the teacher's."""
    teacher = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    assert math.isclose(float(topk_reverse_kl_loss(torch.log(teacher * 0.5), teacher)), 0.0,
                        abs_tol=1e-12)  # fmt: skip
    # One byte per token, no special token: bits per byte is the mean NLL in bits.
    bpb = bits_per_byte([[-0.7, -1.4]], [[1.0, 1.0]], [[104, 105]], ByteTokenizer().decode)
    assert math.isclose(bpb, 1.05 / math.log(2))


def qwen3_formats() -> None:
    tokenizer = ByteTokenizer()
    chat = [Message(role="user", content="2+2?"), Message(role="assistant", content="4")]
    for name, reply in [
        ("qwen3", "<think>\n\n</think>\n\n4<|im_end|>"),
        ("qwen3_disable_thinking", "4<|im_end|>"),
    ]:
        example = get_renderer(name, tokenizer).build_supervised_example(chat)
        trained = [t for t, w in zip(example.tokens, example.weights, strict=True) if w]
        assert tokenizer.decode(trained) == reply


async def main() -> None:
    dpo_variants()
    top_k_and_bits_per_byte()
    qwen3_formats()
    dpo = await Kitchen.run("preference", {"loss_type": "hinge", "max_steps": 2})
    assert dpo.metrics["dpo/num_tokens"] > 0
    rl = await Kitchen.run("reinforcement", {"num_batches": 2, "compute_post_kl": True})
    assert rl.metrics["optim/kl_pre_post_v2"] >= 0.0
    sft = await Kitchen.run("supervised", {"max_steps": 2})
    assert sft.metrics["eval/bpb"] > 0.0


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")
