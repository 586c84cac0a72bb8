"""Produce reference checkpoints and logits with PyTorch (timm, transformers).

Runs inside the torch reference environment (built by setup_torch_reference.sh next to this
file), never inside the MindSpore one. For each case it writes, under ``--out``:

* ``<case>.timm.safetensors`` / ``<case>.timm.pth``: timm's own state dict;
* ``<case>.official.pth``: the same weights in the official Microsoft layout (downsample
  at the end of stages 0..2, ``head``, plus the derived buffers the official code saves);
* ``<case>.mmpretrain.pth``: the same weights in the mmpretrain layout, its patch-merging
  columns reordered by *running* ``nn.Unfold`` (not by a formula shared with mindswin);
* ``<case>.hf/``: an independently initialised transformers ``Swinv2ForImageClassification``
  saved with ``save_pretrained`` (its own logits, not timm's);
* ``<case>.npz``: the input batch and the logits of timm (``timm``) and HF (``hf``);
* ``param_counts.json``: timm's parameter count of every variant given with ``--variants``.

Usage: python torch_reference.py --out DIR --cases JSON --variants JSON
where JSON is a list of {"name", "model", "kwargs", "batch", "seed", "layouts", "weights_from"}.
"""
import argparse
import json
import math
import os
import re

import torch
import torchvision

torchvision.__version__ = "0.0.0"  # the stub's version string trips transformers' version parser

import timm  # noqa: E402


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights: nonzero norms, logit scales on both sides of the clamp."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" in name:
                # clamp is at log(100) ~ 4.605: draw from [log(10) - 1, log(100) + 1]
                p.copy_(torch.empty_like(p).uniform_(math.log(10) - 1, math.log(100) + 1, generator=gen))
            elif p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def timm_to_official(state: dict, model: torch.nn.Module) -> dict:
    """timm -> official names, adding the derived buffers official checkpoints carry."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
        k = k.replace("head.fc.", "head.")
        out[k] = v
    for name, buf in model.named_buffers():
        if buf is None or name.endswith("k_bias"):
            continue
        out[name] = buf.clone()
    return out


def unfold_permutation(channels: int) -> torch.Tensor:
    """Columns of an unfold-ordered merging weight, found by running both orderings."""
    h = w = 2
    x = torch.arange(channels * h * w, dtype=torch.float64).reshape(1, channels, h, w)
    unfolded = torch.nn.Unfold(kernel_size=2, stride=2)(x)[0, :, 0]  # mmpretrain order
    nhwc = x.permute(0, 2, 3, 1)
    concat = torch.cat([nhwc[:, 0::2, 0::2], nhwc[:, 1::2, 0::2], nhwc[:, 0::2, 1::2], nhwc[:, 1::2, 1::2]], -1)
    concat = concat.reshape(-1)  # official order
    position = {float(v): i for i, v in enumerate(unfolded.tolist())}
    return torch.tensor([position[float(v)] for v in concat.tolist()])  # official j <- unfold perm[j]


def timm_to_mmpretrain(state: dict, num_stages: int) -> dict:
    out = {}
    for k, v in state.items():
        if k.startswith("head.fc."):
            out[k] = v
            continue
        if k.startswith("norm."):
            out[f"backbone.norm{num_stages - 1}." + k[len("norm."):]] = v
            continue
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = re.sub(r"^layers\.", "stages.", k)
        k = k.replace(".attn.", ".attn.w_msa.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
        k = k.replace(".mlp.fc2.", ".ffn.layers.1.")
        if k.endswith("downsample.reduction.weight"):
            # official column j equals unfold column perm[j]  =>  mm[:, perm[j]] = official[:, j]
            perm = unfold_permutation(v.shape[1] // 4)
            mm = torch.empty_like(v)
            mm[:, perm] = v
            v = mm
        out["backbone." + k] = v
    return out


def hf_model(kwargs: dict, num_classes: int, seed: int):
    from transformers import Swinv2Config, Swinv2ForImageClassification

    depths = list(kwargs["depths"])
    cfg = Swinv2Config(
        image_size=kwargs["img_size"], patch_size=kwargs.get("patch_size", 4), embed_dim=kwargs["embed_dim"],
        depths=depths, num_heads=list(kwargs["num_heads"]), window_size=kwargs["window_size"],
        pretrained_window_sizes=list(kwargs.get("pretrained_window_sizes", [0] * len(depths))),
        num_labels=num_classes, drop_path_rate=0.0, layer_norm_eps=1e-5)
    model = Swinv2ForImageClassification(cfg).eval()
    randomize(model, seed)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--variants", required=True, help="JSON list of timm model names to count parameters of")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from safetensors.torch import load_file, save_file

    for case in json.loads(args.cases):
        name, kwargs, seed = case["name"], dict(case.get("kwargs", {})), case.get("seed", 0)
        layouts = case.get("layouts", ["timm"])
        model = timm.create_model(case["model"], pretrained=False, **kwargs).eval()
        randomize(model, seed)
        if case.get("weights_from"):
            # transfer: another case's weights into a model of another resolution/window
            source = load_file(os.path.join(args.out, case["weights_from"] + ".timm.safetensors"))
            missing, unexpected = model.load_state_dict(source, strict=False)
            assert not unexpected and all(k.endswith(("k_bias", "relative_coords_table", "relative_position_index",
                                                      "attn_mask")) for k in missing), (missing, unexpected)
        gen = torch.Generator().manual_seed(seed + 1)
        img = model.patch_embed.img_size
        x = torch.randn((case.get("batch", 2), 3, img[0], img[1]), generator=gen)
        result = {"input": x.numpy()}
        with torch.no_grad():
            result["timm"] = model(x).numpy()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        base = os.path.join(args.out, name)
        if "timm" in layouts:
            save_file(state, base + ".timm.safetensors")
            torch.save(state, base + ".timm.pth")
        if "official" in layouts:
            torch.save({"model": timm_to_official(state, model)}, base + ".official.pth")
        if "mmpretrain" in layouts:
            mm = timm_to_mmpretrain(state, len(model.layers))
            torch.save({"meta": {"note": "derived from timm"}, "state_dict": mm}, base + ".mmpretrain.pth")
        if "hf" in layouts:
            hf_kwargs = dict(img_size=img[0], embed_dim=model.embed_dim,
                             depths=[len(s.blocks) for s in model.layers],
                             num_heads=[s.blocks[0].attn.num_heads for s in model.layers],
                             window_size=kwargs.get("window_size", model.layers[0].blocks[0].window_size[0]),
                             patch_size=model.patch_embed.patch_size[0],
                             pretrained_window_sizes=kwargs.get("pretrained_window_sizes",
                                                                [0] * len(model.layers)))
            hf = hf_model(hf_kwargs, model.num_classes, seed + 7)
            with torch.no_grad():
                result["hf"] = hf(pixel_values=x).logits.numpy()
            hf.save_pretrained(base + ".hf")
        import numpy as np

        np.savez(base + ".npz", **result)
        print(f"{name}: wrote {sorted(layouts)}", flush=True)

    counts = {}
    for variant in json.loads(args.variants):
        with torch.device("meta"):
            counts[variant] = sum(p.numel() for p in timm.create_model(variant, pretrained=False).parameters())
    with open(os.path.join(args.out, "param_counts.json"), "w") as f:
        json.dump(counts, f, indent=1)


if __name__ == "__main__":
    main()
