"""What a file that is not an ONNX model is, told by its first bytes, and the way to a model."""

from __future__ import annotations

from onnxsurgeon.errors import InputError

UNPARSED = "is not an ONNX model: its bytes do not parse (truncated or another format)"
INCOMPLETE = "is not an ONNX model (no IR version, graph or opset import: truncated or another format)"
_CONVERT = "convert it to the binary format: python -c \"import onnx; onnx.save(onnx.load('{what}', format='{fmt}'), 'model.onnx')\""
# Formats a model file is often in by mistake, told by its first bytes: (test, what it is, the way out).
_OTHER_FORMATS = (
    (lambda h, t: h.startswith(b"\x1f\x8b"), "a gzip-compressed file, not an ONNX model", "unpack it first (gunzip) and give the .onnx inside"),
    (lambda h, t: h.startswith(b"PK\x03\x04"), "a zip archive (an .npz, a PyTorch checkpoint, a zipped model), not an ONNX model",
     "unpack a zipped model first; export a PyTorch model to ONNX (torch.onnx.export)"),
    (lambda h, t: t.startswith((b"ir_version", b"producer_name", b"graph {", b"opset_import")),
     "an ONNX model in protobuf's text format, not the binary format", _CONVERT.replace("{fmt}", "textproto")),
    (lambda h, t: t.startswith(b"{") and (b'"irVersion"' in h or b'"ir_version"' in h),
     "an ONNX model in JSON, not the binary format", _CONVERT.replace("{fmt}", "json")),
    (lambda h, t: t.startswith(b"<") and b"ir_version" in h, "an ONNX model in ONNX's text syntax, not the binary format",
     "read it with onnx.parser.parse_model(text) and write it with onnx.save(model, 'model.onnx')"),
)


def not_onnx(what: str, head: bytes, message: str) -> InputError:
    """The refusal of a file that is no ONNX model, naming its format where its first bytes tell."""
    for test, it, fix in _OTHER_FORMATS:
        if test(head, head.lstrip()):
            return InputError(f"{what} is {it}", fix.replace("{what}", what))
    return InputError(message, "re-export or re-download the model")
