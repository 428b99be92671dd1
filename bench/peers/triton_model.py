"""Triton Python-backend model: runs the model's ONNX file with onnxruntime. With
dynamic batching on, Triton hands several requests to one `execute`; they run as one
batch and each gets its own rows back."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        feeds = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                 for name in self.inputs}
        rows = [x.shape[0] for x in feeds[self.inputs[0]]]
        results = self.session.run(self.outputs, {k: np.concatenate(v) for k, v in feeds.items()})
        responses, at = [], 0
        for n in rows:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, out[at:at + n]) for name, out in zip(self.outputs, results)]))
            at += n
        return responses
