"""Our supervised step beside TRL's ``SFTTrainer`` on the same model, data, batch and optimizer.

Needs its own optional dependencies (not the package's)::

    .venv/bin/pip install trl transformers

Run::

    .venv/bin/python benchmarks/trl_bench.py                 # tiny Llama, 40 steps, on CPU
    .venv/bin/python benchmarks/trl_bench.py --quick         # 4 steps (skips without trl)
    .venv/bin/python benchmarks/trl_bench.py --device cuda --hidden 768 --layers 12 --seq 1024

The model: a Llama-architecture ``LlamaForCausalLM`` built by ``transformers`` from a tiny
random config (``--hidden``, ``--layers``, ``--heads``; byte vocabulary, tied embeddings),
saved with ``save_pretrained``. TRL trains that directory; our backend (``Trainer``, the
engine of ``LocalTorchTrainingClient``) trains the same weights copied onto our transformer
(the benchmark checks that both give the same logits first). Data: ``--batch`` sequences of
``--seq`` bytes of the bundled corpus per step, the same on both sides. Loss: the token mean
of the next-token cross-entropy (TRL's; ours with weights ``1 / tokens``). Optimizer: AdamW,
constant ``--lr``, betas (0.9, 0.999), no weight decay, no clipping.

Each side runs in its own subprocess and reports steps/s (after one warm-up step), its peak
memory (peak RSS on CPU; ``torch.cuda.max_memory_allocated`` on CUDA) and its loss per step;
the parent prints both and the largest loss difference.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _peak_memory(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _batches(args: argparse.Namespace) -> list[list[list[int]]]:
    corpus = importlib.resources.files("crucible_kitchen.training") / "data" / "corpus.txt"
    data = corpus.read_bytes()
    size = args.seq
    rows = [list(data[i : i + size]) for i in range(0, len(data) - size, size)]
    need = (args.steps + 1) * args.batch
    rows = (rows * (need // len(rows) + 1))[:need]
    return [rows[i : i + args.batch] for i in range(0, need, args.batch)]


def _llama_config(args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(256, args.seq),
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10_000.0,
        attention_bias=False,
        mlp_bias=False,
    )


def _byte_tokenizer() -> Any:
    """A tokenizer of the 256 byte ids (TRL wants one for padding; the data is tokenized)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{byte}>": byte for byte in range(256)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<0>", eos_token="<0>")


def _our_state(hf_state: dict[str, Any], layers: int) -> dict[str, Any]:
    """Hugging Face Llama tensor names -> ours."""
    names = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    parts = {
        "self_attn.q_proj": "attn.q",
        "self_attn.k_proj": "attn.k",
        "self_attn.v_proj": "attn.v",
        "self_attn.o_proj": "attn.o",
        "mlp.gate_proj": "mlp.gate",
        "mlp.up_proj": "mlp.up",
        "mlp.down_proj": "mlp.down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "mlp_norm",
    }
    for layer in range(layers):
        for theirs, ours in parts.items():
            names[f"model.layers.{layer}.{theirs}.weight"] = f"layers.{layer}.{ours}.weight"
    return {ours: hf_state[theirs] for theirs, ours in names.items()}


def run_ours(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from crucible_kitchen.adapters.local_torch import ModelConfig
    from crucible_kitchen.adapters.local_torch._trainer import StepOptions, Trainer
    from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = ModelConfig(
        vocab_size=256,
        d_model=args.hidden,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.hidden * 11 // 4,
        max_seq_len=max(256, args.seq),
        tie_embeddings=True,
        device=args.device,
    )
    trainer = Trainer(config, seed=0, lora=None, options=StepOptions(loss_chunk=args.loss_chunk))
    trainer.model.load_state_dict(_our_state(hf.state_dict(), args.layers))
    probe = torch.tensor([list(range(32))])
    with torch.no_grad():
        theirs = hf(probe).logits
        ours = trainer.model(probe.to(trainer.device)).cpu()
    logit_gap = float((theirs - ours).abs().max())
    del hf
    adam = AdamParams(learning_rate=args.lr, beta1=0.9, beta2=0.999, eps=1e-8)
    losses, times = [], []
    for rows in _batches(args):
        weight = 1.0 / (len(rows) * (args.seq - 1))
        data = [
            Datum(
                model_input=ModelInput.from_ints(row[:-1]),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(row[1:])),
                    "weights": TensorData(dtype="float32", data=(weight,) * (len(row) - 1)),
                },
            )
            for row in rows
        ]
        start = time.perf_counter()
        output = trainer.forward(data, "cross_entropy", {}, ("weights",), backward=True)
        trainer.optim_step(adam)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(output.metrics["loss:sum"])
    return {
        "side": "ours",
        "steps_per_s": (len(times) - 1) / sum(times[1:]),
        "peak_memory_bytes": _peak_memory(args.device),
        "losses": losses,
        "initial_logit_gap": logit_gap,
    }


def run_trl(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [row for batch in _batches(args) for row in batch]
    dataset = Dataset.from_dict({"input_ids": rows})
    stamps: list[float] = []
    losses: list[float] = []

    class Stamp(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: Any = None, **__: Any
        ) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=args.steps + 1,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=0.0,
            optim="adamw_torch",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            max_length=args.seq,
            packing=False,
            dataloader_drop_last=True,
            use_cpu=not args.device.startswith("cuda"),
            seed=0,
            data_seed=0,
            disable_tqdm=True,
            dataset_kwargs={"skip_prepare_dataset": True},
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=_byte_tokenizer(),
            callbacks=[Stamp()],
        )
        # Keep the data order: the same batches as ours.
        trainer._get_train_sampler = lambda *_: torch.utils.data.SequentialSampler(dataset)
        start = time.perf_counter()
        trainer.train()
    intervals = [b - a for a, b in zip([start, *stamps], stamps, strict=False)]
    return {
        "side": "trl",
        "steps_per_s": (len(intervals) - 1) / sum(intervals[1:]),
        "peak_memory_bytes": _peak_memory(args.device),
        "losses": losses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 steps; skips without trl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss-chunk", type=int, default=None)
    parser.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 4
    missing = [name for name in ("trl", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"skipped: needs {' and '.join(missing)} (pip install trl transformers)")
        return 0 if args.quick else 2
    if args.side is not None:
        run = run_ours if args.side == "ours" else run_trl
        print(json.dumps(run(args, args.model_dir)))
        return 0
    import torch
    from transformers import LlamaForCausalLM

    results = []
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        LlamaForCausalLM(_llama_config(args)).save_pretrained(directory)
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
        for side in ("ours", "trl"):
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--side", side, "--model-dir", directory],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ours, trl = results
    gap = max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"], strict=False))
    for result in results:
        print(
            f"{result['side']:>4}: {result['steps_per_s']:.2f} steps/s, peak memory "
            f"{result['peak_memory_bytes'] / 2**20:.0f} MiB, loss "
            f"{result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}"
        )
    print(
        f"ours / trl steps/s: {ours['steps_per_s'] / trl['steps_per_s']:.2f}x; largest loss "
        f"difference over {min(len(ours['losses']), len(trl['losses']))} steps: {gap:.2e}; "
        f"initial logits max |ours - transformers|: {ours['initial_logit_gap']:.1e}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
