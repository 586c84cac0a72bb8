"""One implementation x one shape per process: train-step and inference throughput, compile time, peak RSS.

Run by bench/run_bench.py (never imported by the library). ``--impl mindswin|mindcv`` runs in
the MindSpore venv, ``--impl timm`` in the torch reference venv. Prints one JSON line.

The step is the same everywhere: forward, cross-entropy on integer labels, backward, AdamW
update, float32. Warm-up steps (which include graph compilation in MindSpore) are timed
separately; throughput is the median over ``--repeats`` timed runs of ``--steps`` steps.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

SHAPES = {
    # name: (image size, batch, model arguments shared by all three implementations)
    "tiny": (256, 8, dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=8,
                          num_classes=1000)),
    "small": (32, 64, dict(patch_size=2, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12), window_size=4,
                           num_classes=10)),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed_runs(step, steps: int, repeats: int, batch: int):
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates), rates


def mindspore_train_step(model, optimizer):
    """One MindSpore train step as a Cell: forward, cross-entropy, backward, optimizer update."""
    import mindspore as ms
    from mindspore import nn, ops

    class TrainStep(nn.Cell):
        # A Cell, as in mindcv's and mindswin's trainers: a @ms.jit *function* closing over
        # the model and optimizer measured ~200 ms slower per call here (same graph, same
        # numbers), which would swamp both models' compute.
        def __init__(self):
            super().__init__()
            self.model = model
            self.optimizer = optimizer
            self.grad_fn = ms.value_and_grad(self.loss, None, optimizer.parameters)

        def loss(self, x, y):
            return ops.cross_entropy(self.model(x), y)

        def construct(self, x, y):
            loss, grads = self.grad_fn(x, y)
            self.optimizer(grads)
            return loss

    return TrainStep()


def run_mindspore(impl: str, shape: str, args) -> dict:
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mindswin.models.threads import set_cpu_threads

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    # The same framework setting for both MindSpore implementations (see set_cpu_threads).
    set_cpu_threads()
    size, batch, arch = SHAPES[shape]
    if impl == "mindswin":
        import mindswin

        model = mindswin.create_model("swinv2_tiny_window8_256", img_size=size,
                                      pretrained_window_sizes=[0] * len(arch["depths"]), **arch)
    else:
        from mindcv.models.swintransformerv2 import SwinTransformerV2

        model = SwinTransformerV2(image_size=size, patch_size=arch["patch_size"], num_classes=arch["num_classes"],
                                  embed_dim=arch["embed_dim"], depths=list(arch["depths"]),
                                  num_heads=list(arch["num_heads"]), window_size=arch["window_size"],
                                  drop_path_rate=0.0, pretrained_window_sizes=[0] * len(arch["depths"]))
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, arch["num_classes"], batch).astype(np.int32))
    result = {}

    model.set_train(False)
    start = time.perf_counter()
    model(images).asnumpy()
    result["infer_compile_s"] = time.perf_counter() - start
    for _ in range(args.warmup):
        model(images).asnumpy()
    result["infer_img_s"], result["infer_runs"] = timed_runs(lambda: model(images).asnumpy(), args.steps,
                                                             args.repeats, batch)

    model.set_train(True)
    optimizer = nn.AdamWeightDecay(model.trainable_params(), learning_rate=1e-4, weight_decay=0.05)

    train_step = mindspore_train_step(model, optimizer)

    start = time.perf_counter()
    train_step(images, labels).asnumpy()
    result["train_compile_s"] = time.perf_counter() - start
    for _ in range(args.warmup):
        train_step(images, labels).asnumpy()
    result["train_img_s"], result["train_runs"] = timed_runs(lambda: train_step(images, labels).asnumpy(),
                                                             args.steps, args.repeats, batch)
    return result


def run_timm(shape: str, args) -> dict:
    import torch
    import torchvision

    torchvision.__version__ = "0.0.0"
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    torch.manual_seed(0)
    size, batch, arch = SHAPES[shape]
    model = SwinTransformerV2(img_size=size, drop_path_rate=0.0, **arch)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, arch["num_classes"], (batch,))
    result = {"infer_compile_s": 0.0, "train_compile_s": 0.0}
    model.eval()

    def infer():
        with torch.no_grad():
            model(images)

    for _ in range(args.warmup):
        infer()
    result["infer_img_s"], result["infer_runs"] = timed_runs(infer, args.steps, args.repeats, batch)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        train_step()
    result["train_img_s"], result["train_runs"] = timed_runs(train_step, args.steps, args.repeats, batch)
    return result


def run_matmul(args) -> dict:
    """Achieved fp32 GFLOP/s of a 2048^2 MindSpore matmul: the machine's practical peak."""
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    n = 2048
    a = ms.Tensor(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    matmul = ops.MatMul()
    matmul(a, a).asnumpy()
    rate, _ = timed_runs(lambda: matmul(a, a).asnumpy(), 5, args.repeats, 1)
    return {"matmul_gflops": rate * 2 * n ** 3 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", required=True, choices=("mindswin", "mindcv", "timm", "matmul"))
    parser.add_argument("--shape", default="small", choices=tuple(SHAPES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.impl == "timm":
        result = run_timm(args.shape, args)
    elif args.impl == "matmul":
        result = run_matmul(args)
    else:
        result = run_mindspore(args.impl, args.shape, args)
    result.update(impl=args.impl, shape=args.shape, peak_rss_mb=peak_rss_mb())
    print("BENCH " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
