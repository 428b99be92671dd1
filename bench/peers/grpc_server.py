"""A hand-made KServe v2 gRPC server on onnxruntime: grpcio with the service stubs
generated in tritonclient (`grpc_service_pb2_grpc`), answering ServerLive/Ready,
ModelReady, ModelMetadata, ModelConfig and ModelInfer (raw_input_contents in,
raw_output_contents out).

    bench/out/venvs/grpc/bin/python bench/peers/grpc_server.py \
        --model mlp=examples/models/mlp/1/model.onnx --port 8101
"""

import argparse
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

V2_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
            "tensor(int32)": "INT32", "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8"}
NP_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
            "BOOL": np.bool_, "UINT8": np.uint8}


def dims(t):
    return [d if isinstance(d, int) else -1 for d in t.shape]


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models):
        self.models = models

    def get(self, name, context):
        if name not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name}")
        return self.models[name]

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name in self.models)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="grpc-onnxruntime", version="1")

    def ModelMetadata(self, request, context):
        s = self.get(request.name, context)
        t = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[t(name=i.name, datatype=V2_TYPES[i.type], shape=dims(i)) for i in s.get_inputs()],
            outputs=[t(name=o.name, datatype=V2_TYPES[o.type], shape=dims(o)) for o in s.get_outputs()])

    def ModelConfig(self, request, context):
        s = self.get(request.name, context)
        io = model_config_pb2
        return service_pb2.ModelConfigResponse(config=io.ModelConfig(
            name=request.name, platform="onnxruntime_onnx", max_batch_size=0,
            input=[io.ModelInput(name=i.name, data_type=io.DataType.Value("TYPE_" + V2_TYPES[i.type]),
                                 dims=dims(i)) for i in s.get_inputs()],
            output=[io.ModelOutput(name=o.name, data_type=io.DataType.Value("TYPE_" + V2_TYPES[o.type]),
                                   dims=dims(o)) for o in s.get_outputs()]))

    def ModelInfer(self, request, context):
        s = self.get(request.model_name, context)
        if len(request.raw_input_contents) != len(request.inputs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs must come as raw_input_contents")
        feeds = {}
        for i, raw in zip(request.inputs, request.raw_input_contents):
            try:
                feeds[i.name] = np.frombuffer(raw, dtype=NP_TYPES[i.datatype]).reshape(list(i.shape))
            except (KeyError, ValueError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {i.name}: {e}")
        outs = s.run(None, feeds)
        out = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for o, v in zip(s.get_outputs(), outs):
            out.outputs.add(name=o.name, datatype=V2_TYPES[o.type], shape=list(v.shape))
            out.raw_output_contents.append(np.ascontiguousarray(v).tobytes())
        return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8101)
    p.add_argument("--workers", type=int, default=8, help="gRPC handler threads")
    a = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    models = {m.split("=", 1)[0]: ort.InferenceSession(m.split("=", 1)[1], opts,
                                                       providers=["CPUExecutionProvider"])
              for m in a.model}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(models), server)
    server.add_insecure_port(f"{a.host}:{a.port}")
    server.start()
    print(f"gRPC server listening on {a.host}:{a.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
