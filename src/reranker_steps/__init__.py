"""The logic of the python-backend steps, as plain typed functions that run without Triton.

``reranker_export`` renders this package whole into the version directory of every python step
(``<repo>/<step>/1/reranker_steps/``) beside that step's ``model.py``, a thin adapter that reads
Triton's tensors, calls these functions and writes the answers back. So the rendered repository
is self-contained, and the tests import the same code directly.

Modules (each imports only what its own step needs, never Triton):

- ``errors``: ``BadRequest``, a request the caller must change (answered INVALID_ARGUMENT);
- ``params``: reading the string parameters of a step's ``config.pbtxt``;
- ``pairs``: request text checks, FlagReranker pair semantics, truncation or windowing, bucket
  padding (the ``reranker_tokenizer`` step; needs ``tokenizers``);
- ``onnx_scoring``: onnxruntime session options, batching and length-sorted sub-batches (the
  ``reranker_model`` step of the ``cpu`` profile; needs ``onnxruntime``);
- ``windows``: the maximum over each document's windows (the ``reranker_scores`` step);
- ``abandonment``: whether a request is still wanted (cancelled, past its timeout), asking Triton
  sparingly;
- ``triton``: the one adapter helper all steps share (per-request answers and error codes); it
  alone imports ``triton_python_backend_utils``.
"""
