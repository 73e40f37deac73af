"""``kitchen serve --tinker``: the server in a process of its own, driven by the SDK's blocking
API over loopback, stopped with SIGINT as a terminal would."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tinker
from _tinker_support import ADAM, API_KEY, sft_datum
from test_serve_command import kitchen_serve

if TYPE_CHECKING:
    from pathlib import Path


def test_serve_tinker_trains_over_loopback_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    env = {"TINKER_API_KEY": API_KEY}
    with kitchen_serve("--tinker", "--root", str(tmp_path), env=env) as port:
        client = tinker.ServiceClient(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY)
        trainer = client.create_lora_training_client(base_model="tiny", rank=4).result()
        result = trainer.forward_backward([sft_datum()], "cross_entropy").result()
        trainer.optim_step(ADAM).result()
        saved = trainer.save_state("first").result()
        client.close("success").result()
    assert result.metrics["loss:sum"] > 0
    run, _, name = saved.path.removeprefix("tinker://").partition("/weights/")
    session, _, number = run.partition(":train:")
    assert (tmp_path / "tinker" / session / f"train-{number}" / "weights" / name).is_dir()
