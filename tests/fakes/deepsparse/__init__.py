"""A stand-in for DeepSparse in the tests (the real one lives in its own venv: make setup-deepsparse).

``compile_model`` returns an engine that runs the file on ONNX Runtime and, like a static-shape engine,
refuses any input whose shape is not the one it was compiled for. ``FAKE_DEEPSPARSE_LOG`` (a file path), when
set, gets one line per compile and per run with the shapes, so a test can see what the worker asked for.
``FAKE_DEEPSPARSE_MS`` (JSON ``{"<length>": ms}``), when set, makes each run of an engine compiled for that
length sleep that long, so a test decides what the worker's timing of its engines finds.
"""

import json
import os
import time

__version__ = "0.0+fake"


def _log(**entry):
    path = os.environ.get("FAKE_DEEPSPARSE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class Engine:
    fraction_of_supported_ops = 1.0
    cpu_avx_type = "fake"
    cpu_vnni = False

    def __init__(self, model, batch_size=1, num_cores=None, input_shapes=None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_size, self.num_cores = batch_size, num_cores or os.cpu_count()
        self.input_shapes = [list(s) for s in input_shapes]
        _log(op="compile", batch_size=batch_size, input_shapes=self.input_shapes, num_cores=num_cores)

    def run(self, inputs):
        shapes = [list(a.shape) for a in inputs]
        if shapes != self.input_shapes:
            raise ValueError(f"inputs of shapes {shapes}; the engine is compiled for {self.input_shapes}")
        _log(op="run", shapes=shapes)
        n = self.input_shapes[0][1]
        time.sleep(json.loads(os.environ.get("FAKE_DEEPSPARSE_MS") or "{}").get(str(n), 0) / 1e3)
        return self.session.run(self.output_names, dict(zip(self.input_names, inputs)))


def compile_model(model, batch_size=1, num_cores=None, num_streams=None, scheduler=None, input_shapes=None,
                  cached_outputs=None):
    return Engine(model, batch_size, num_cores, input_shapes)
