"""``interest-stream export`` / ``python -m export``: checkpoint directory -> model.onnx + model.json.

Importing this module needs neither torch nor onnx (the worker-only install imports the CLI);
they load inside the command.
"""
from __future__ import annotations

import click


@click.command("export")
@click.argument("ckpt_dir", metavar="DIR", type=click.Path(path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=str),
              help="Directory to write model.onnx and model.json into (created if missing).")
@click.option("--int8", is_flag=True, default=False,
              help="Quantize the weights to int8 (onnxruntime dynamic quantization); needs --data.")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="JSONL event log the checkpoint was trained on: the int8 accuracy change is "
                   "measured on its validation split (the split the model card records).")
def export_cmd(ckpt_dir: str, out_dir: str, int8: bool, data: str | None) -> None:
    """Export the checkpoint DIR (from `train`) to ONNX: model.onnx + model.json in --out.

    The export fails unless ONNX Runtime and PyTorch agree within 1e-4 on several batch sizes and
    lengths (right padding included)."""
    from interest_core.errors import InterestStreamError

    if data is not None and not int8:
        raise click.UsageError("--data is only used with --int8")
    try:
        from export.onnx_export import export_checkpoint

        export_checkpoint(ckpt_dir, out_dir, int8=int8, data=data)
    except InterestStreamError as exc:
        raise click.ClickException(str(exc)) from None
    except ImportError as exc:
        raise click.ClickException(f"export needs the `train` extra (torch, onnx): {exc}") from None
