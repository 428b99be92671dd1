"""The common hand-made baseline: FastAPI + uvicorn + onnxruntime, speaking KServe v2
over HTTP with JSON tensors (`GET /v2`, `GET /v2/health/ready`, `GET /v2/models/{m}`,
`GET /v2/models/{m}/ready`, `GET /v2/models/{m}/config`, `POST /v2/models/{m}/infer`).

    bench/out/venvs/fastapi/bin/python bench/peers/fastapi_server.py \
        --model mlp=examples/models/mlp/1/model.onnx --port 8100
"""

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

V2_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
            "tensor(int32)": "INT32", "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8"}
NP_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
            "BOOL": np.bool_, "UINT8": np.uint8}


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def tensors(ts):
    return [{"name": t.name, "datatype": V2_TYPES[t.type],
             "shape": [d if isinstance(d, int) else -1 for d in t.shape]} for t in ts]


def make_app(models):
    app = FastAPI()

    def get(name):
        if name not in models:
            raise HTTPException(404, f"unknown model {name}")
        return models[name]

    @app.exception_handler(HTTPException)
    async def error(_request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/v2/health/ready")
    @app.get("/v2/health/live")
    async def ready():
        return {}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "fastapi-onnxruntime", "version": "1", "extensions": []}

    @app.get("/v2/models/{name}")
    async def metadata(name: str):
        s = get(name)
        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": tensors(s.get_inputs()), "outputs": tensors(s.get_outputs())}

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        get(name)
        return {}

    @app.get("/v2/models/{name}/config")
    async def config(name: str):
        s = get(name)
        return {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": 0,
                "input": [{"name": t["name"], "data_type": "TYPE_" + t["datatype"],
                           "dims": t["shape"]} for t in tensors(s.get_inputs())],
                "output": [{"name": t["name"], "data_type": "TYPE_" + t["datatype"],
                            "dims": t["shape"]} for t in tensors(s.get_outputs())]}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        s = get(name)
        body = await request.json()
        try:
            feeds = {i["name"]: np.asarray(i["data"], dtype=NP_TYPES[i["datatype"]]).reshape(i["shape"])
                     for i in body["inputs"]}
        except (KeyError, ValueError, TypeError) as e:
            raise HTTPException(400, f"bad request: {e}")
        outs = s.run(None, feeds)
        return {"model_name": name, "model_version": "1", "id": body.get("id", ""),
                "outputs": [{"name": o.name, "datatype": V2_TYPES[o.type], "shape": list(v.shape),
                             "data": v.ravel().tolist()} for o, v in zip(s.get_outputs(), outs)]}

    return app


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    a = p.parse_args()
    models = {m.split("=", 1)[0]: session(m.split("=", 1)[1]) for m in a.model}
    uvicorn.run(make_app(models), host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
