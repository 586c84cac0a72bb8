"""Entry points behind train.py, validate.py, infer.py and export.py (kept thin there) and the console scripts.

Every command runs in one frame (:func:`command`): MindSpore's log kept to errors, a user error
(bad config, checkpoint, data, missing file, full disk) printed as one ``error:`` line with exit
status 2, the log flushed at the end.
"""
from __future__ import annotations

import os

# Read when mindspore is first imported, which the imports below do: keep its log to errors
# (unless the user set it). The package's own __init__ imports nothing, so this line runs first.
os.environ.setdefault("GLOG_v", "3")

import argparse  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Callable, List, Optional, Tuple  # noqa: E402

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import ops  # noqa: E402

from .checkpoint import CheckpointError, CheckpointMetadata, read_metadata, read_state_dict  # noqa: E402
from .checkpoint.convert import convert_checkpoint  # noqa: E402
from .config import Config, ConfigError, add_option, check_geometry, load_config, parse_args, require  # noqa: E402
from .data import (  # noqa: E402
    IMAGE_EXTENSIONS,
    DataError,
    create_eval_dataset,
    decode_rgb,
    load_image,
    resolve_data_config,
)
from .data.dataset import Shard, scan_data_split  # noqa: E402
from .data.folder import scan_map_file  # noqa: E402
from .engine.builder import model_from_config  # noqa: E402
from .engine.cam import GradCAM, cam_on_image, save_cam_picture  # noqa: E402
from .engine.evaluate import EvalStep, evaluate  # noqa: E402
from .engine.memory_guard import evaluation_batch_size  # noqa: E402
from .engine.onnx_batch import batch_dynamic_model  # noqa: E402
from .engine.runtime import (  # noqa: E402
    apply_jit_config,
    direct_graph_dumps,
    evaluate_alone_unless_launched,
    graph_compile_report,
    quiet_framework,
    setup_logging,
    setup_runtime,
)
from .engine.throughput import as_records, measure_throughput  # noqa: E402
from .engine.trainer import train  # noqa: E402
from .fileio import DiskFullError, atomic_write, atomic_write_json  # noqa: E402
from .pretrained import pretrained_path, resolve_pretrained  # noqa: E402

__all__ = ["command", "run_train", "run_validate", "run_infer", "run_export", "run_convert_weights"]

_USER_ERRORS = (ConfigError, CheckpointError, DataError, FileNotFoundError, DiskFullError)


def _fail(exc: BaseException) -> int:
    # One line: some messages quote multi-line text (a YAML parser's, MindSpore's).
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"error: {message}", file=sys.stderr)
    return 2


def command(body: Callable[[Optional[List[str]]], None]) -> Callable[[Optional[List[str]]], int]:
    """The frame of every command: ``body(argv)`` does the work and raises a user error as such.

    Returns the command ``(argv) -> exit status``: 0; 2 after one ``error:`` line for a user error; 1 after one
    ``error:`` line naming MindSpore's report when a graph fails to compile (MindSpore writes the report
    into the run's ``ckpt_save_dir``, or a temporary folder, never the working directory).
    """
    @functools.wraps(body)
    def run(argv: Optional[List[str]] = None) -> int:
        quiet_framework()
        direct_graph_dumps()  # a training run moves them into its ckpt_save_dir
        try:
            body(argv)
        except _USER_ERRORS as exc:
            return _fail(exc)
        except Exception as exc:  # only a failed compile becomes one line; anything else is re-raised
            report = graph_compile_report(exc)
            if report is None:
                raise
            print(f"error: {report}", file=sys.stderr)
            return 1
        logging.shutdown()
        return 0

    return run


@command
def run_train(argv: Optional[List[str]] = None) -> None:
    """``train.py``: parse the config, train, report."""
    config = parse_args(argv, script="train", description="Train or fine-tune Swin V2 with MindSpore", examples=(
        "python train.py --config configs/demo/swinv2_micro_shapes_cpu.yaml --data_dir demo_data\n"
        "msrun --worker_num 8 --local_worker_num 8 train.py --config "
        "configs/swinv2/swinv2_tiny_window8_256_in1k.yaml --data_dir /data/imagenet --distribute True\n"
        "python train.py --config configs/swinv2/swinv2_base_window12to16_192to256_22kto1k_ft.yaml"
        " --data_dir /data/imagenet   # starts from its pretrained: swinv2_base_window12_192.ms_in22k\n"
        "python train.py --config RECIPE.yaml --data_dir DIR --ckpt_save_dir OUT --resume auto"))
    _check_output_folder(config, "ckpt_save_dir", "the checkpoints")
    # train.py's alone: a recipe that shards in training is evaluated by the other scripts as it is
    if config.enable_parallel_optimizer and not config.distribute:
        raise ConfigError("enable_parallel_optimizer shards the optimizer state across the data-parallel ranks, and "
                          "this run is one process (distribute False): launch it with msrun --worker_num N ... "
                          "--distribute True, or set --enable_parallel_optimizer False")
    setup_logging()
    try:
        train(config)
    except RuntimeError as exc:
        error = _out_of_memory(exc, config)
        if error is exc:
            raise
        raise error from exc


def _check_output_file(path: str, key: str) -> None:
    """Refuse, before any work, an output file ``path`` (given by ``key``) where a folder is or below a file."""
    if not path:
        return
    if os.path.isdir(path):
        raise ConfigError(f"--{key}: {path} is a folder; name a file to write, e.g. {os.path.join(path, 'out.json')}")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--{key}: {path} cannot be written, {existing} is a file; name a file in a folder "
                          "(missing folders are created)")


def _check_output_folder(config, key: str, what: str) -> None:
    """Refuse an output folder ``config[key]`` (for ``what``) that names a file; a missing one is created."""
    path = config[key]
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--{key} {path} is a file, not a folder: pass a folder for {what} (it is created if "
                          "missing)")


# What MindSpore's runtime says when the device (or host, on CPU) memory cannot hold the step.
_OUT_OF_MEMORY = ("Memory not enough", "Out of memory", "out of memory", "Malloc device memory failed")


def _out_of_memory(exc: RuntimeError, config) -> BaseException:
    """A ConfigError naming the ways to fit the step when ``exc`` is MindSpore's out-of-memory; else ``exc``."""
    if not any(marker in str(exc) for marker in _OUT_OF_MEMORY):
        return exc
    return ConfigError(f"the device ran out of memory for one training step of {config.model} at batch_size "
                       f"{config.batch_size} ({config.device_target}, amp_level {config.amp_level}): lower "
                       "--batch_size (and raise --gradient_accumulation_steps to keep the global batch), or set "
                       "--recompute True; checkpoints already saved are untouched")


def _with_pretrained(config) -> Tuple[Config, str]:
    """The config whose ``ckpt_path`` is the weights to evaluate: as given, else the ``pretrained`` file (fetched
    into the cache now). Also returns the published weights' name ("" for a ``ckpt_path``).
    """
    if config.ckpt_path:
        if config.pretrained is not False:
            logging.getLogger("mindswin").info("evaluating --ckpt_path %s; pretrained %s is not fetched",
                                               config.ckpt_path, config.pretrained)
        return config.replace(pretrained=False), ""
    if config.pretrained is False:
        raise ConfigError("--ckpt_path or --pretrained is required: the weights to evaluate (a checkpoint file, "
                          "or True / a name of python -m mindswin.pretrained for published weights)")
    choice = resolve_pretrained(config.model, config.pretrained)
    path = pretrained_path(config.model, config.pretrained, pretrained_dir=config.pretrained_dir)
    return config.replace("pretrained weights", ckpt_path=path, pretrained=False), choice.weights.name


def _checkpoint_metadata(config, computes_here: bool = True) -> Tuple[Config, CheckpointMetadata]:
    """Read ``ckpt_path``'s metadata; the config with the model keys the user did not set taken from it.

    Evaluation computes in float32 (``amp_level`` O0) unless asked otherwise (:func:`_evaluates_in_float32`);
    without ``computes_here`` (export: the graph runs on another device) only unless set.
    """
    if not os.path.exists(config.ckpt_path):
        raise CheckpointError(f"checkpoint not found: {config.ckpt_path}; refusing to run random weights")
    metadata = read_metadata(config.ckpt_path)
    if metadata.task == "simmim":
        raise CheckpointError(f"{config.ckpt_path} holds SimMIM pre-training weights (task simmim): an encoder with no "
                              "classifier, so there is nothing to evaluate, predict or export; fine-tune it first: "
                              f"train.py --config RECIPE --data_dir DIR --ckpt_path {config.ckpt_path}")
    taken = {key: value for key, value in metadata.model_config().items() if key not in config.explicit}
    if "amp_level" not in config.explicit or (computes_here and _evaluates_in_float32(config)):
        taken["amp_level"] = "O0"
    config = config.replace(f"{config.ckpt_path}'s metadata", **taken)
    check_geometry(config)
    return config, metadata


def _evaluates_in_float32(config) -> bool:
    """On CPU, a recipe's ``amp_level`` is not evaluated in: only one given on the command line is.

    A recipe's AMP level is its training's, and on MindSpore's CPU backend float16 is no faster:
    Swin V2-T's forward at batch 32 held 3,984 MB under O2 against 1,469 MB in float32 and took
    1.7x as long (docs/memory_plan.md), which made mindcv's Ascend recipe run out of memory
    where float32 evaluates in 4 GB.
    """
    if config.device_target != "CPU" or "amp_level" in config.commanded or config.amp_level == "O0":
        return False
    logging.getLogger("mindswin").info("evaluating in float32 on CPU: the recipe's amp_level %s is its training's "
                                       "(float16 is no faster on this backend, in several times the memory); "
                                       "--amp_level %s evaluates in it anyway", config.amp_level, config.amp_level)
    return True


def _eval_model(config, num_classes: int, **build):
    """The model with ``ckpt_path`` loaded strictly: a head of another class count is an error."""
    return model_from_config(config, num_classes, training=False, strict_head=True, **build)[0]


@command
def run_validate(argv: Optional[List[str]] = None) -> None:
    """``validate.py``: top-1/top-5/loss of a checkpoint over the val split."""
    config = parse_args(argv, script="validate", description="Top-1/top-5/loss of a Swin V2 checkpoint on "
                        "DATA_DIR/VAL_SPLIT (one folder per class)", examples=(
                            "python validate.py --data_dir demo_data --ckpt_path demo_output/"
                            "swinv2_micro_window4_32-best.ckpt --output results.json\n"
                            "python validate.py --model swinv2_tiny_window8_256 --data_dir /data/imagenet"
                            " --pretrained True\n"
                            "msrun --worker_num 2 --local_worker_num 2 validate.py --data_dir DIR --ckpt_path CKPT"
                            " --distribute True\n"
                            "python validate.py --throughput True --config configs/swinv2/"
                            "swinv2_tiny_window8_256_in1k.yaml"),
                        model_from_checkpoint=True)
    _check_output_file(config.output, "output")
    setup_logging()
    config = evaluate_alone_unless_launched(config)
    if config.throughput:
        _run_throughput(config)
        return
    require(config, ("data_dir",))
    config, _ = _with_pretrained(config)
    config, metadata = _checkpoint_metadata(config)
    runtime = setup_runtime(config)
    setup_logging(runtime)
    if config.val_map_file:
        index = scan_map_file(os.path.join(config.data_dir, config.val_map_file), config.data_dir,
                              num_classes=config.num_classes or metadata.num_classes, verify=config.verify_images,
                              strict=config.strict_data, num_workers=config.num_parallel_workers)
    else:
        index = scan_data_split(config.data_dir, config.val_split, metadata.class_names, config.verify_images,
                                config.strict_data, config.num_parallel_workers)
    batch_size = evaluation_batch_size(config, config.val_batch_size or config.batch_size)
    dataset, info = create_eval_dataset(index, resolve_data_config(config), batch_size,
                                        shard=Shard(runtime.group_size, runtime.rank),
                                        num_workers=config.num_parallel_workers)
    model = _eval_model(config, config.num_classes or metadata.num_classes or info.num_classes)
    step = apply_jit_config(EvalStep(model, distributed=runtime.distributed), config)
    result = evaluate(step, dataset, info.batches_per_epoch, progress=runtime.is_main)
    if runtime.is_main:
        summary = dict(top1=round(result.top1, 4), top5=round(result.top5, 4), loss=round(result.loss, 6),
                       num_samples=result.num_samples, ckpt=config.ckpt_path, model=model.model_name,
                       images_per_second=round(result.images_per_second, 2))
        print(f"{model.model_name} on {os.path.join(config.data_dir, config.val_split)}: top-1 {result.top1:.3f}% "
              f"top-5 {result.top5:.3f}% loss {result.loss:.4f} ({result.num_samples} images, "
              f"{result.images_per_second:.1f} img/s)")
        if config.output:
            atomic_write_json(config.output, summary)


def _run_throughput(config) -> None:
    """``validate.py --throughput``: the recipe's model, timed (weights optional: they do not change the speed)."""
    check_geometry(config)
    runtime = setup_runtime(config)
    setup_logging(runtime)
    results = measure_throughput(config, runtime)
    if runtime.is_main:
        for result in results:
            print(result.line())
        if config.output:
            atomic_write_json(config.output, as_records(results))


def _read_class_names(path: str) -> List[str]:
    """The names in ``class_names_file``: one per line, in index order."""
    fix = ("pass a UTF-8 text file with one class name per line in index order, or leave --class_names_file out "
           "for the checkpoint's class names")
    if not os.path.isfile(path):
        raise ConfigError(f"class_names_file not found: {path}; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"class_names_file {path} is not a text file ({exc.reason} at byte {exc.start}); "
                          f"{fix}") from exc


def _class_names(config, metadata, num_classes: Optional[int]) -> List[str]:
    if config.class_names_file:
        names = _read_class_names(config.class_names_file)
    elif metadata.class_names:
        names = list(metadata.class_names)
    elif num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    else:
        raise ConfigError("the checkpoint stores no class list: pass --class_names_file FILE (one name per line) "
                          "or --num_classes N")
    if num_classes and len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names for a {num_classes}-class model")
    return names


def _collect_images(inputs: List[str]) -> List[str]:
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, _, names in sorted(os.walk(item)):
                files += [os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"image or folder not found: {item}")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


@command
def run_infer(argv: Optional[List[str]] = None) -> None:
    """``infer.py``: top-k classes with probabilities for images, eval preprocessing."""
    config = parse_args(argv, script="infer", description="Predict classes of images (files or folders) with "
                        "a Swin V2 checkpoint", examples=(
                            "python infer.py --ckpt_path demo_output/swinv2_micro_window4_32-best.ckpt --topk 2"
                            " demo_data/val/checkerboard/00000.png\n"
                            "python infer.py --model swinv2_tiny_window8_256 --pretrained True "
                            "--class_names_file names.txt --output preds.json photos/"),
                        positional="inputs", model_from_checkpoint=True)
    if not config.inputs:
        raise ConfigError("give one or more images or folders after the options")
    _check_output_folder(config, "cam", "the Grad-CAM pictures")
    _check_output_file(config.output, "output")
    setup_logging()
    config, _ = _with_pretrained(config)
    config, metadata = _checkpoint_metadata(config)
    setup_runtime(config)
    # a file without mindswin metadata is read for its head's rows (a damaged one is named as such)
    names = _class_names(config, metadata, config.num_classes or metadata.num_classes or
                         _num_classes_in(config.ckpt_path))
    model = _eval_model(config, len(names))
    files = _collect_images(config.inputs)
    preprocessing = resolve_data_config(config)
    batch = min(len(files), 16)
    k = min(config.topk, len(names))
    forward = GradCAM(model) if config.cam else model  # with cam: the logits and, from the same graph, the maps
    results = []
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        arrays = [load_image(path, preprocessing) for path in chunk]
        arrays += [arrays[0]] * (batch - len(arrays))  # static batch shape: pad the last chunk
        outputs = forward(ms.Tensor(np.stack(arrays).astype(np.float32)))
        logits, cams = outputs if config.cam else (outputs, None)
        probs = ops.softmax(logits, axis=-1).asnumpy()
        for i, (path, p) in enumerate(zip(chunk, probs)):
            top = np.argsort(-p)[:k]
            results.append({"image": path, "top": [{"class": names[j], "index": int(j),
                                                     "probability": round(float(p[j]), 6)} for j in top]})
            if cams is not None:
                _write_cam(config.cam, path, cams[i].asnumpy(), results[-1]["top"], preprocessing)
    for item in results:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in item["top"])
        print(f"{item['image']}: {best}")
    if config.cam:
        print(f"Grad-CAM pictures in {config.cam} (IMAGE_cam.png; the maps as IMAGE_cam.npy)")
    if config.output:
        atomic_write_json(config.output, results)


def _write_cam(folder: str, path: str, cam, top, preprocessing) -> None:
    """``folder/STEM_cam.png`` (the image, the map over it, the top-k) and the map as ``STEM_cam.npy``."""
    image = np.asarray(decode_rgb(path))
    heat = cam_on_image(cam, image.shape[0], image.shape[1], preprocessing.image_size, preprocessing.crop_pct)
    stem = os.path.join(folder, os.path.splitext(os.path.basename(path))[0])
    os.makedirs(folder, exist_ok=True)
    np.save(f"{stem}_cam.npy", heat)
    save_cam_picture(f"{stem}_cam.png", image, heat, [(t["class"], t["probability"]) for t in top])


@command
def run_export(argv: Optional[List[str]] = None) -> None:
    """``export.py``: MindIR or ONNX of a checkpoint, with a dynamic batch unless --batch_size is given."""
    config = parse_args(argv, script="export", description="Export a Swin V2 checkpoint to MindIR or ONNX "
                        "(a dynamic batch unless --batch_size is given)", examples=(
                            "python export.py --ckpt_path demo_output/swinv2_micro_window4_32-best.ckpt\n"
                            "python export.py --model swinv2_tiny_window8_256 --pretrained True "
                            "--batch_size 8 --export_file swinv2_tiny\n"
                            "python export.py --ckpt_path CKPT --file_format ONNX --batch_size 1"),
                        model_from_checkpoint=True)
    setup_logging()
    config, published = _with_pretrained(config)
    # published weights export next to the user, not into the cache
    target = config.export_file or published or os.path.splitext(config.ckpt_path)[0]
    _check_output_file(f"{target}.{config.file_format.lower()}", "export_file")
    config, metadata = _checkpoint_metadata(config, computes_here=False)
    setup_runtime(config)
    num_classes = config.num_classes or metadata.num_classes or _num_classes_in(config.ckpt_path)
    onnx = config.file_format == "ONNX"
    dynamic = config.dynamic_batch if config.dynamic_batch is not None else "batch_size" not in config.explicit
    # The exported graph must run anywhere: no ops from this machine's compiled library; and for ONNX,
    # none without a converter in MindSpore 2.10 (Erf, Rsqrt)
    model = _eval_model(config, num_classes, kernels="native", portable=onnx)
    size = resolve_data_config(config).image_size
    batch = config.batch_size if "batch_size" in config.explicit else 1
    try:
        if onnx and dynamic:
            _export_onnx_any_batch(model, size, target)
        else:
            sample = (ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32) if dynamic
                      else ms.Tensor(np.zeros((batch, 3, size, size), np.float32)))
            ms.export(model, sample, file_name=target, file_format=config.file_format)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"MindSpore {ms.__version__} could not export this model as {config.file_format}: "
                          f"{str(exc).splitlines()[0]}") from exc
    print(f"wrote {target}.{config.file_format.lower()} (input {'N' if dynamic else batch}x3x{size}x{size}, "
          f"{model.model_name})")


# The config keys the conversion builds the model with; the output loads with the same values.
CONVERT_MODEL_KEYS = ("model", "num_classes", "image_resize", "window_size", "pretrained_window_sizes", "class_map")


@command
def run_convert_weights(argv: Optional[List[str]] = None) -> None:
    """``tools/convert_weights.py``: official / timm / Hugging Face / mmpretrain weights to a mindswin .ckpt."""
    parser = argparse.ArgumentParser(description="Convert official / timm / Hugging Face / mmpretrain Swin V2 "
                                                 "weights to a mindswin .ckpt")
    parser.add_argument("--src", required=True, help="checkpoint file (.pth/.bin/.safetensors/.ckpt) or HF directory")
    parser.add_argument("--out", required=True, help="output .ckpt")
    for key in CONVERT_MODEL_KEYS:
        add_option(parser, key, required=key == "model")
    options = vars(parser.parse_args(argv))
    src, out = options.pop("src"), options.pop("out")
    _check_output_file(out, "out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = load_config(overrides=options)
    try:
        report = convert_checkpoint(src, config.model, out, class_map=config.class_map or None,
                                    num_classes=config.num_classes, img_size=config.image_resize,
                                    window_size=config.window_size,
                                    pretrained_window_sizes=config.pretrained_window_sizes)
    except ValueError as exc:  # a model argument the weights do not fit
        raise exc if isinstance(exc, ConfigError) else ConfigError(str(exc)) from exc
    print(report.summary())
    if report.dropped:
        print(f"dropped: {', '.join(report.dropped[:8])}{' ...' if len(report.dropped) > 8 else ''}")
    print(f"wrote {out}")


def _export_onnx_any_batch(model, size: int, target: str) -> None:
    """ONNX whose batch is free: two fixed exports, merged by :func:`engine.onnx_batch.batch_dynamic_model`."""
    try:
        import onnx  # optional: only this export needs it
    except ImportError as exc:
        raise ConfigError("a dynamic-batch ONNX file needs the onnx package (pip install onnx==1.17.0; 1.18 and "
                          "later need numpy 2, which MindSpore 2.10 does not run with), or pass --batch_size N "
                          "for a fixed batch") from exc
    batches = (2, 3)
    with tempfile.TemporaryDirectory() as folder:
        exports = []
        for batch in batches:
            stem = os.path.join(folder, f"batch{batch}")
            ms.export(model, ms.Tensor(np.zeros((batch, 3, size, size), np.float32)), file_name=stem,
                      file_format="ONNX")
            exports.append(onnx.load(stem + ".onnx"))
        merged = batch_dynamic_model(exports[0], exports[1], batches)
    atomic_write(f"{target}.onnx", lambda tmp: onnx.save(merged, tmp))


def _num_classes_in(path: str) -> int:
    state, _, _ = read_state_dict(path)
    if "head.weight" not in state:
        raise ConfigError(f"{path} has no classifier head; pass --num_classes")
    return int(state["head.weight"].shape[0])
