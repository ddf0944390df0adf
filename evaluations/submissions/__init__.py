"""Untrusted models: code-free formats loaded without running submitted code, and workers that run a
submission's code in its own contained process and talk to the evaluator only in plain arrays.

* :mod:`.file_format` -- which format a model is in, from its files' names (no torch);
* :mod:`.wire` -- the plain-array message format (no pickle in either direction);
* :mod:`.loading` -- import a model's code, read weights without code, load a ``torch.export`` program;
* :mod:`.worker` -- the process that holds one submission's model and answers requests;
* :mod:`.sandbox` -- the worker's command line: bubblewrap namespaces, uid nobody, resource limits;
* :mod:`.remote` -- the evaluator's side: start a worker, check every reply, a torch module proxy;
* :mod:`.onnx_format` -- ONNX models: onnxruntime for outputs, a torch evaluation of the graph for gradients.
"""
