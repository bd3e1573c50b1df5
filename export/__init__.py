"""Checkpoint directory -> ``model.onnx`` + ``model.json`` (CONTRACT.md, "Model artifacts").

``python -m export DIR --out DIR2 [--int8 --data FILE]``; the code is in :mod:`export.onnx_export`,
the click command in :mod:`export.cli` (importable without torch).
"""
